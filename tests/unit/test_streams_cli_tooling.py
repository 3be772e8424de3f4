"""The service package stands alone: only the command line reaches into `tooling`, lazily, and says
clearly what is missing where the tooling is not installed (the worker image)."""

from __future__ import annotations

import ast
import importlib.abc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.__main__ import main

STREAMS = Path(__file__).resolve().parents[2] / "streams"


def _imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_only_the_command_line_imports_tooling() -> None:
    offenders = [
        f"{path.relative_to(STREAMS.parent)}: {module}"
        for path in sorted(STREAMS.rglob("*.py"))
        if path != STREAMS / "__main__.py"
        for module in _imported_modules(path)
        if module.split(".")[0] == "tooling"
    ]
    assert offenders == []


class _NoTooling(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] == "tooling":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.mark.parametrize("argv", [["demo"], ["produce-sample"], ["collect", "--manifest", "m.json"]])
def test_tooling_commands_explain_a_missing_tooling_package(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "tooling"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoTooling(), *sys.meta_path])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "`tooling` package" in capsys.readouterr().err
