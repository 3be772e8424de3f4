"""`python -m streams model list|load|unload`: the versions of the model a running Triton serves.

Triton runs in explicit model-control mode and its repository API takes an admin key
(`ECOM_TRITON_ADMIN_KEY`, sent as the gRPC metadata `triton-grpc-protocol-admin-key`; docs/security.md).
Triton loads the versions a model's `version_policy` names, so loading or unloading one version is a
load of the model with its running config and a new `specific` policy: the versions now ready, plus or
minus the one asked for. Triton keeps serving the versions it had until the new set is ready, and an
unloaded version finishes the requests it holds. A failed load leaves what was served as it was.

Each version's name is pinned as a `model_version_name@<version>` parameter in the config sent (the
name the workers already stamp for a version that was served; `--name`, or `<name>@<version>`, for a
new one), so the names on the outputs never change under a load or an unload (docs/architecture.md,
"Versions"). The config sent lives until Triton restarts: then `config.pbtxt` decides again
(docs/rollout.md, "Make it permanent").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from streams.cli import OperatorError
from streams.contract import VERSION_SEPARATOR, parse_model_config
from streams.errors import EnrichmentError
from streams.settings import Settings

ADMIN_METADATA = "triton-grpc-protocol-admin-key"  # Triton's gRPC form of the `admin-key` header


class ControlError(OperatorError):
    """The command cannot do what it was asked; the message says why (exit code 2)."""


@dataclass(frozen=True)
class VersionState:
    version: str
    state: str  # Triton's: READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""
    name: str = ""  # what the workers stamp on its outputs
    categories: int = 0
    embedding_dim: int = 0


def add_model_parser(sub: Any) -> None:
    """Register `model list|load|unload` on the command line's subparsers."""
    model = sub.add_parser(
        "model",
        help="the versions of the model Triton serves: list, load, unload",
        description="List, load or unload versions of the model in the running Triton "
        "(ECOM_TRITON_GRPC_URL, ECOM_TRITON_MODEL), with the admin key ECOM_TRITON_ADMIN_KEY. "
        "Runbook: docs/rollout.md.",
    )
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every version Triton knows of, its state and name")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    load = actions.add_parser("load", help="serve one more version, beside those served now")
    load.add_argument("version", help="Triton's version number (a folder of the model repository)")
    load.add_argument("--name", default=None, help="the name its outputs carry (default: from the config)")
    unload = actions.add_parser("unload", help="stop serving one version; the others stay")
    unload.add_argument("version", help="Triton's version number")
    for parser in (load, unload):
        parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the new state")
        parser.add_argument(
            "--dry-run", action="store_true", help="print the versions and names; change nothing"
        )


class ModelControl:
    """Triton's repository API for one model, over gRPC with the admin key."""

    def __init__(
        self, url: str, model: str, key: str | None, *, ssl: bool = False, client: Any = None
    ) -> None:
        if client is None:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(url, ssl=ssl)
        self.client = client
        self.url = url
        self.model = model
        self.key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelControl:
        key = settings.triton_admin_key.get_secret_value() if settings.triton_admin_key else None
        return cls(settings.triton_grpc_url, settings.triton_model, key, ssl=settings.triton_ssl)

    def _headers(self) -> dict[str, str]:
        if not self.key:
            raise ControlError("Triton's repository API needs the admin key: set ECOM_TRITON_ADMIN_KEY")
        return {ADMIN_METADATA: self.key}

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as exc:
            message = str(exc.message() or "")
            if "restricted" in message:  # Triton's words for a missing or wrong key (gRPC UNAVAILABLE)
                raise ControlError(f"Triton refused {what}: the admin key is missing or wrong") from None
            raise ControlError(f"{what} failed: {exc.status()}: {message}") from None

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self._call(
            "reading the model config", lambda: self.client.get_model_config(self.model, as_json=True)
        )
        return dict(config.get("config", config))

    def states(self) -> list[VersionState]:
        """Every version of the model in Triton's repository index, with what its config declares."""
        headers = self._headers()
        index = self._call(
            "the repository index",
            lambda: self.client.get_model_repository_index(headers=headers, as_json=True),
        )
        config = self.config()
        found = []
        for entry in index.get("models", []):
            if entry.get("name") != self.model or not str(entry.get("version", "")).isdigit():
                continue
            version = str(entry["version"])
            try:
                info = parse_model_config(self.model, config, version)
                name, categories, dim = info.version, len(info.category_labels), info.embedding_dim
            except EnrichmentError:
                name, categories, dim = "(config breaks the contract)", 0, 0
            found.append(
                VersionState(
                    version, str(entry.get("state", "")), str(entry.get("reason", "")), name, categories, dim
                )
            )
        return sorted(found, key=lambda s: int(s.version))

    def ready_versions(self) -> list[str]:
        """The versions ready now, from the model's metadata (no key needed)."""
        metadata = self._call(
            "reading the model metadata", lambda: self.client.get_model_metadata(self.model, as_json=True)
        )
        return sorted((str(v) for v in metadata.get("versions", [])), key=int)

    def planned_config(self, versions: list[str], served: list[str], names: dict[str, str]) -> dict[str, Any]:
        """The running config with a `specific` policy of `versions` and every version's name pinned."""
        current = self.config()
        planned = copy.deepcopy(current)
        planned["version_policy"] = {"specific": {"versions": [int(v) for v in versions]}}
        params = planned.setdefault("parameters", {})
        for version in versions:
            key = f"model_version_name{VERSION_SEPARATOR}{version}"
            if version in names:
                params[key] = {"string_value": names[version]}
            elif key not in params:
                # Served now: the name the workers stamp today. New: what the planned config says.
                source = current if version in served else planned
                params[key] = {"string_value": parse_model_config(self.model, source, version).version}
        return planned

    def apply(self, config: dict[str, Any]) -> None:
        headers = self._headers()
        text = json.dumps(config)
        self._call("the load", lambda: self.client.load_model(self.model, headers=headers, config=text))

    def wait_for(
        self, version: str, ready: bool, wait_s: float, sleep: Callable[[float], None] = time.sleep
    ) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            states = {s.version: s.state for s in self.states()}
            if (states.get(version) == "READY") == ready and (ready or states.get(version) != "UNLOADING"):
                return True
            if time.monotonic() >= deadline:
                return False
            sleep(0.5)


def _served(states: list[VersionState]) -> list[str]:
    return [s.version for s in states if s.state in ("READY", "LOADING")]


def model_command(
    settings: Settings, args: argparse.Namespace, out: TextIO, control: ModelControl | None = None
) -> int:
    control = control or ModelControl.from_settings(settings)
    try:
        if args.model_command == "list":
            return _list(control, args.json, out)
        version = str(args.version)
        if not version.isdigit():
            raise ControlError(f"a version is Triton's version number, not {version!r}")
        load = args.model_command == "load"
        return change_versions(
            control,
            settings,
            version,
            load=load,
            name=args.name if load else None,
            wait_s=args.wait,
            dry_run=args.dry_run,
            out=out,
        )
    finally:
        close = getattr(control.client, "close", None)
        if close is not None:
            close()


def _list(control: ModelControl, as_json: bool, out: TextIO) -> int:
    if not control.key:
        ready = control.ready_versions()
        if as_json:
            out.write(json.dumps({"model": control.model, "ready": ready, "index": None}) + "\n")
        else:
            out.write(
                f"{control.model} on {control.url}: versions ready {', '.join(ready) or 'none'} "
                "(the full list with states needs ECOM_TRITON_ADMIN_KEY)\n"
            )
        return 0
    states = control.states()
    ready = [s.version for s in states if s.state == "READY"]
    latest = max(ready, key=int) if ready else None
    if as_json:
        document = {
            "model": control.model,
            "ready": ready,
            "latest": latest,
            "versions": [asdict(s) for s in states],
        }
        out.write(json.dumps(document) + "\n")
        return 0
    out.write(f"{control.model} on {control.url}\n")
    out.write(f"  {'version':<8} {'state':<12} {'name (on the outputs)':<40} categories  embedding\n")
    for s in states:
        detail = s.name if s.state == "READY" else (s.reason or "-")
        sizes = f"{s.categories:>10}  {s.embedding_dim:>9}" if s.state == "READY" else ""
        out.write(f"  {s.version:<8} {s.state:<12} {detail:<40} {sizes}\n")
    if latest is not None:
        out.write(f"requests that name no version (ECOM_MODEL_VERSION empty) go to version {latest}\n")
    else:
        out.write("no version is ready: inference waits\n")
    return 0


def change_versions(
    control: ModelControl,
    settings: Settings,
    version: str,
    *,
    load: bool,
    name: str | None = None,
    wait_s: float = 600.0,
    dry_run: bool = False,
    out: TextIO,
) -> int:
    """Load (`load=True`) or unload one version, keeping the others served; `settings` only for the
    warning when this environment's settings name the version being unloaded."""
    states = control.states()
    served = _served(states)
    if load and version in served and name is None:
        out.write(f"version {version} is served already: {', '.join(served)}\n")
        return 0
    if not load and version not in served:
        out.write(f"version {version} is not served: {', '.join(served) or 'none'}\n")
        return 0
    versions = sorted(set(served) | {version}, key=int) if load else [v for v in served if v != version]
    if not versions:
        raise ControlError(
            f"version {version} is the only one served: unloading it would stop inference; load another first"
        )
    for role, named in (
        ("ECOM_MODEL_VERSION", settings.model_version),
        ("ECOM_CANARY_VERSION", settings.canary_version),
        ("ECOM_SHADOW_VERSION", settings.shadow_version),
    ):
        if not load and named == version:
            out.write(
                f"note: {role}={version} in this environment; workers set so wait for it (docs/rollout.md)\n"
            )
    planned = control.planned_config(versions, served, {version: name} if name else {})
    names = {v: parse_model_config(control.model, planned, v).version for v in versions}
    out.write(
        f"{'would serve' if dry_run else 'serving'} versions {', '.join(versions)} "
        f"(now {', '.join(served) or 'none'}): " + ", ".join(f"{v} as {names[v]}" for v in versions) + "\n"
    )
    if dry_run:
        return 0
    started = time.monotonic()
    control.apply(planned)
    if not control.wait_for(version, load, wait_s):
        raise ControlError(
            f"version {version} did not become {'ready' if load else 'unloaded'} in {wait_s:.0f}s"
        )
    ready = control.ready_versions()
    out.write(
        f"version {version} {'loaded' if load else 'unloaded'} in {time.monotonic() - started:.1f}s; "
        f"ready: {', '.join(ready)}; requests that name no version go to {max(ready, key=int)}\n"
    )
    return 0
