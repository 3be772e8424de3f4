"""Helpers shared by the deployment-file tests: loading compose files as Compose does, the service's
contracts as its code declares them, and pulling metric and label names out of PromQL.

Kept in plain functions so each test reads as the check it makes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streams.settings import ENV_PREFIX, Settings
from streams.topology import ROUTES
from tooling import contracts as generated
from tooling.embedded import TritonServer

# Shared with the live scrape test (tests/integration/test_prometheus_scrape.py); re-exported here.
from tooling.embedded.prometheus import dashboard_panels as dashboard_panels
from tooling.embedded.prometheus import dashboard_queries as dashboard_queries
from tooling.embedded.prometheus import grafana_to_promql as grafana_to_promql

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_TESTS = Path(__file__).resolve().parent
SCHEMAS = DEPLOY_TESTS / "schemas"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU_FILE = REPO_ROOT / "docker-compose.cpu.yml"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD_FILE = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "ecom-enrichment.json"
K8S = REPO_ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))

# Series that Prometheus itself makes for every target; they are exported by no application.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# The worker's own process, from prometheus-client's default collectors (not in the contract's table of
# service metrics; test_deploy_grafana checks the worker's registry really has them).
CLIENT_LIBRARY_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
# Labels Prometheus attaches to every scraped series (job/instance) or that histograms carry.
TARGET_LABELS = {"job", "instance", "le", "namespace", "pod", "container", "endpoint", "service"}


# --- Compose -------------------------------------------------------------------------------------


class _Reset:
    """Compose's `!reset` tag: remove the value that the earlier file set."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Override:
    """Compose's `!override` tag: replace the earlier value instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's merge tags (`!reset`, `!override`)."""


def _tag(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node))  # type: ignore[arg-type]

    return construct


ComposeLoader.add_constructor("!reset", _tag(_Reset))
ComposeLoader.add_constructor("!override", _tag(_Override))


def load_compose(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        data = yaml.load(fh, Loader=ComposeLoader)
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def strip_tags(value: Any) -> Any:
    """The file as a plain document (what the schema sees): tags replaced by their values."""
    if isinstance(value, _Reset | _Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_tags(v) for v in value]
    return value


# Keys whose values an override file replaces rather than merges (compose-spec 13-merge.md).
_REPLACED = {"command", "entrypoint", "test"}


def merge_compose(base: Any, override: Any, key: str = "") -> Any:
    """Merge an override file into a base the way `docker compose -f a -f b` does, for the parts
    these files use: mappings merge, `!reset` removes, `!override` and command-like keys replace."""
    if isinstance(override, _Reset):
        return None
    if isinstance(override, _Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            if isinstance(v, _Reset):
                merged.pop(k, None)
            elif k in merged:
                merged[k] = merge_compose(merged[k], v, k)
            else:
                merged[k] = strip_tags(v)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        # Sequences such as ports and volumes are appended; duplicates kept out.
        return base + [strip_tags(v) for v in override if v not in base]
    return strip_tags(override)


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$\$")


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (`${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$`)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        unset_or_empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return current or ""

    return _VAR.sub(substitute, value)


def compose_variables(value: Any) -> Iterator[tuple[str, str | None, str | None]]:
    """Every `${...}` reference in a compose document: (name, operator, argument)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from compose_variables(v)
    elif isinstance(value, list):
        for v in value:
            yield from compose_variables(v)
    elif isinstance(value, str):
        for m in _VAR.finditer(value):
            if m.group(0) != "$$":
                yield m.group("name"), m.group("op"), m.group("arg")


def environment_of(service: Mapping[str, Any], passed: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment as its container gets it. A variable without a value (`NAME:` or `- NAME`)
    is passed from .env or the shell, `passed` here, and left out of the container when unset there."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    passed = passed or {}
    return {k: str(v) if v is not None else passed[k] for k, v in env.items() if v is not None or k in passed}


def passed_through(service: Mapping[str, Any]) -> set[str]:
    """The variables a service takes from .env or the shell as they are (no value in the file)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item for item in env if "=" not in item}
    return {k for k, v in env.items() if v is None}


# --- Image references ----------------------------------------------------------------------------

_IMAGE_REF = re.compile(
    r"(?P<name>[^@\s]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>[^\s]+))?"
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageRef:
    """`name[:tag][@digest]`, e.g. `apache/kafka:3.9.1@sha256:...` (a registry's `host:port/` stays
    in the name)."""

    name: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        match = _IMAGE_REF.fullmatch(ref)
        assert match, f"not an image reference: {ref!r}"
        name, tag = match.group("name"), match.group("tag")
        if tag is None and ":" in name.rsplit("/", 1)[-1]:
            raise AssertionError(f"not an image reference: {ref!r}")
        return cls(name, tag, match.group("digest"))


# --- Dockerfiles (read without a Docker engine) ----------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    result = []
    for line in lines:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def build_args(dockerfile: Path) -> dict[str, str]:
    args = {}
    for word, rest in instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def stages(dockerfile: Path) -> list[str]:
    args = build_args(dockerfile)
    bases = []
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return bases


# --- Contracts (as the code declares them) --------------------------------------------------------


@dataclass(frozen=True)
class MetricContract:
    name: str
    type: str
    labels: frozenset[str]


@dataclass
class Contracts:
    worker_metrics: dict[str, MetricContract] = field(default_factory=dict)
    triton_metrics: set[str] = field(default_factory=set)
    input_topics: list[str] = field(default_factory=list)
    all_topics: list[str] = field(default_factory=list)
    settings: set[str] = field(default_factory=set)


def read_contracts() -> Contracts:
    """The contracts from the code they are generated from (tooling.contracts: the routes, the settings
    class, the collectors of streams.metrics), never from prose; docs/architecture.md's tables are
    rendered from the same sources and checked by tests/unit/test_contracts.py."""
    contracts = Contracts()
    for metric in generated.worker_metrics():
        contracts.worker_metrics[metric.name] = MetricContract(
            metric.name, metric.type, frozenset(metric.labels)
        )
    contracts.triton_metrics = {name for name, _ in generated.TRITON_METRICS}
    contracts.input_topics = [route.input for route in ROUTES]
    contracts.all_topics = [topic.name for topic in generated.topics()]
    contracts.settings = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
    return contracts


def expand_sample_names(name: str, metric_type: str) -> set[str]:
    """The series names a metric family of this type exposes in the Prometheus text format."""
    if metric_type == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if metric_type == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if metric_type == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if metric_type == "info":
        return {f"{name}_info"}
    return {name}


def sample_base(sample: str, known: Mapping[str, Any]) -> str | None:
    """The metric family of a series name (`x_bucket` -> `x`), among `known` families."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
        if sample.endswith(suffix):
            base = sample[: len(sample) - len(suffix)] if suffix else sample
            if base in known:
                return base
            if suffix == "_total" and sample in known:
                return sample
    return None


# --- PromQL ---------------------------------------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}  # fmt: skip
_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _strip_strings(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expr)
    return re.sub(r"`[^`]*`", "``", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (function names, keywords, labels excluded)."""
    s = _strip_strings(expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", s)  # numbers
    names = set()
    for m in re.finditer(_IDENT, s):
        token = m.group(0)
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if token.lower() in _KEYWORDS or token.startswith("$"):
            continue
        names.add(token)
    return names


def promql_selector_labels(expr: str) -> dict[str, set[str]]:
    """For each metric selected with matchers, the label names it is matched on."""
    s = _strip_strings(expr)
    result: dict[str, set[str]] = {}
    for m in re.finditer(rf"({_IDENT})\s*\{{([^}}]*)\}}", s):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        result.setdefault(m.group(1), set()).update(labels)
    return result


def promql_grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_* clauses."""
    labels: set[str] = set()
    for m in _GROUPING.finditer(_strip_strings(expr)):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return labels


# --- Dashboard and alerts -------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text())
    assert isinstance(data, dict)
    return data


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def all_queries() -> list[tuple[str, str]]:
    return [(f"dashboard: {t}", q) for t, q in dashboard_queries(load_dashboard())] + [
        (f"alert: {t}", q) for t, q in alert_queries()
    ]


# --- A throwaway Triton model (tests/deploy/conftest.py) ---------------------------------------

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
"""

ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1000 }
input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""


def infer_echo(server: TritonServer, value: float) -> float:
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [value]}]})
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/echo/infer",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return float(json.load(resp)["outputs"][0]["data"][0])


# --- Tools ----------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path(f"/usr/bin/{name}").exists():
        found = f"/usr/bin/{name}"
    return found


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ)
    )


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    assert kubectl is not None
    result = run([kubectl, "kustomize", str(path)])
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def deep_copy(value: Any) -> Any:
    return copy.deepcopy(value)
