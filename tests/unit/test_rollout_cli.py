"""`python -m streams model list|load|unload` against a fake of Triton's gRPC client (the real Triton:
tests/integration/test_model_rollout.py)."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from streams.__main__ import build_parser
from streams.contract import parse_model_config
from streams.rollout_cli import ADMIN_METADATA, ControlError, ModelControl, change_versions, model_command
from streams.settings import Settings

KEY = "k" * 32


class FakeTriton:
    """Versions 1..3 in the repository; `ready` are loaded; a load with a config applies its policy."""

    def __init__(self, ready: set[int], params: dict[str, str] | None = None) -> None:
        self.ready = set(ready)
        self.known = set(ready)
        self.loads: list[dict[str, Any]] = []
        base = {
            "model_version_name": "fusion-x",
            "category_labels": json.dumps(["a", "b"]),
            "embedding_dim": "4",
            "sentiment_labels": json.dumps(["negative", "neutral", "positive"]),
            **(params or {}),
        }
        self.config: dict[str, Any] = {
            "name": "ecom_fusion",
            "max_batch_size": 64,
            "version_policy": {"specific": {"versions": [str(v) for v in sorted(ready)]}},
            "parameters": {k: {"string_value": v} for k, v in base.items()},
        }

    def _key(self, headers: dict[str, str] | None) -> None:
        if (headers or {}).get(ADMIN_METADATA) != KEY:
            raise InferenceServerException(
                "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'",
                status="StatusCode.UNAVAILABLE",
            )

    def get_model_repository_index(self, headers: dict[str, str] | None = None, as_json: bool = False) -> Any:
        self._key(headers)
        return {
            "models": [
                {
                    "name": "ecom_fusion",
                    "version": str(v),
                    "state": "READY" if v in self.ready else "UNAVAILABLE",
                }
                for v in sorted(self.known)
            ]
        }

    def get_model_config(self, model: str, as_json: bool = False) -> Any:
        return {"config": json.loads(json.dumps(self.config))}

    def get_model_metadata(self, model: str, as_json: bool = False) -> Any:
        return {"name": model, "versions": [str(v) for v in sorted(self.ready)]}

    def load_model(
        self, model: str, headers: dict[str, str] | None = None, config: str | None = None
    ) -> None:
        self._key(headers)
        assert config is not None
        self.config = json.loads(config)
        self.loads.append(self.config)
        self.ready = {int(v) for v in self.config["version_policy"]["specific"]["versions"]}
        self.known |= self.ready

    def close(self) -> None:
        pass


def control(triton: FakeTriton, key: str | None = KEY) -> ModelControl:
    return ModelControl("triton:8001", "ecom_fusion", key, client=triton)


def run(triton: FakeTriton, *argv: str, key: str | None = KEY, **settings: Any) -> tuple[int, str]:
    args = build_parser().parse_args(["model", *argv])
    out = io.StringIO()
    return model_command(Settings(**settings), args, out, control(triton, key)), out.getvalue()


def test_load_serves_one_more_version_and_pins_every_name() -> None:
    triton = FakeTriton({1})
    code, out = run(triton, "load", "2", "--wait", "1")
    assert code == 0 and triton.ready == {1, 2}
    [sent] = triton.loads
    assert sent["version_policy"] == {"specific": {"versions": [1, 2]}}
    # Version 1 keeps the name it had while served alone; version 2 gets one of its own.
    names = {v: parse_model_config("ecom_fusion", sent, v).version for v in ("1", "2")}
    assert names == {"1": "fusion-x", "2": "fusion-x@2"}
    assert sent["parameters"]["model_version_name@1"] == {"string_value": "fusion-x"}
    assert sent["max_batch_size"] == 64  # the rest of the running config is sent back as it was
    assert "requests that name no version go to 2" in out


def test_a_name_given_or_declared_wins_and_unload_keeps_the_names() -> None:
    triton = FakeTriton({1}, {"model_version_name@1": "fusion-1.0"})
    assert run(triton, "load", "2", "--name", "fusion-2.0", "--wait", "1")[0] == 0
    code, out = run(triton, "unload", "1", "--wait", "1")
    assert code == 0 and triton.ready == {2}
    assert parse_model_config("ecom_fusion", triton.config, "2").version == "fusion-2.0"
    assert "serving versions 2 (now 1, 2): 2 as fusion-2.0" in out


def test_loading_a_served_version_or_unloading_an_absent_one_changes_nothing() -> None:
    triton = FakeTriton({1, 2})
    assert run(triton, "load", "2")[1].startswith("version 2 is served already")
    assert run(triton, "unload", "3")[1].startswith("version 3 is not served")
    assert triton.loads == []


def test_the_last_version_is_never_unloaded() -> None:
    with pytest.raises(ControlError, match="only one served"):
        run(FakeTriton({1}), "unload", "1")


def test_a_wrong_or_missing_key_is_refused_not_retried() -> None:
    triton = FakeTriton({1})
    with pytest.raises(ControlError, match="admin key is missing or wrong"):
        run(triton, "load", "2", key="x" * 32)
    with pytest.raises(ControlError, match="ECOM_TRITON_ADMIN_KEY"):
        run(triton, "load", "2", key=None)
    assert triton.loads == []
    # Listing needs no key: the versions ready, from the model's metadata.
    code, out = run(triton, "list", key=None)
    assert code == 0 and "versions ready 1" in out


def test_dry_run_and_list() -> None:
    triton = FakeTriton({1, 2}, {"model_version_name@2": "fusion-2.0"})
    code, out = run(triton, "unload", "2", "--dry-run", model_version="2")
    assert code == 0 and triton.loads == [] and "would serve versions 1" in out
    assert "note: ECOM_MODEL_VERSION=2" in out
    code, out = run(triton, "list", "--json")
    listing = json.loads(out)
    assert listing["ready"] == ["1", "2"] and listing["latest"] == "2"
    assert [v["name"] for v in listing["versions"]] == ["fusion-x@1", "fusion-2.0"]


def test_a_version_is_a_number() -> None:
    with pytest.raises(ControlError, match="version number"):
        run(FakeTriton({1}), "load", "latest")


def test_change_versions_is_the_commands_own() -> None:
    triton = FakeTriton({1})
    out = io.StringIO()
    assert change_versions(control(triton), Settings(), "3", load=True, wait_s=1, out=out) == 0
    assert triton.ready == {1, 3}
    assert isinstance(build_parser().parse_args(["model", "list"]), argparse.Namespace)
