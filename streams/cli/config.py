"""`config show`: the settings a command run here would use, secrets masked.

One line per setting, as the environment variable that sets it (`ECOM_...=value`), marked with where
the value came from: the environment, or the default. A secret shows as `********` when it is set, never
its value or its length.
"""

from __future__ import annotations

from typing import IO, Any

import orjson
from pydantic import SecretStr

from streams.settings import ENV_PREFIX, Settings

MASK = "********"


def effective(settings: Settings) -> list[tuple[str, Any, str]]:
    """(variable, value, "environment" | "default") for every setting; a set secret is `MASK`, an unset
    optional setting None."""
    rows = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = MASK if value.get_secret_value() else ""
        source = "environment" if name in settings.model_fields_set else "default"
        rows.append((f"{ENV_PREFIX}{name}".upper(), value, source))
    return rows


def show_command(settings: Settings, *, as_json: bool, out: IO[str]) -> int:
    rows = effective(settings)
    if as_json:
        document = {var: {"value": value, "source": source} for var, value, source in rows}
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    width = max(len(var) + 1 + len(_text(value)) for var, value, _ in rows)
    for var, value, source in rows:
        line = f"{var}={_text(value)}"
        out.write(f"{line:<{width}}  # {source}{'' if value is not None else ', unset'}\n")
    return 0


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
