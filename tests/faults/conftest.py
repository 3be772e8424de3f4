"""The fault suite runs only when asked for by its marker (`make test-faults`: `pytest tests/faults -m
faults`): the default run leaves it out (pyproject.toml's `-m 'not faults'`), and so does any run whose
own `-m` does not name it (`-m integration` would otherwise pick it up)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.option.markexpr or ""
    if "faults" in expression and "not faults" not in expression:
        return
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]
