"""The service's contracts, generated from the code that enforces them.

    python -m tooling.contracts           write contracts/ and the generated tables of docs/architecture.md
    python -m tooling.contracts --check   write nothing; exit 1 naming every file that is stale

What is generated, and from where:

- `contracts/schemas/<Model>.json`: a JSON Schema (draft-07) for every record on a topic, from the
  pydantic models: each route's input (`Route.event`, as the service *accepts* it) and output
  (`Route.output_event`, as the service *writes* it) in `streams.topology.ROUTES`, and a dead letter's
  error context (`streams.events.DeadLetter`, carried in the headers of the record that failed).
- `contracts/asyncapi.yaml`: an AsyncAPI 3.0 document of the same topics: one channel per topic (inputs,
  outputs, dead letters), messages whose payloads are those schemas and whose Kafka binding names the
  key (a dead letter: the original value, and its error-context headers by name), and the operations
  from the service's side (it receives the inputs, sends the rest).
- docs/architecture.md: the topic, settings and metric tables, between `<!-- generated: NAME -->` and
  `<!-- end generated -->`, from the routes, `streams.settings.Settings` and the collectors of
  `streams.metrics`. The prose around them is written by hand.

tests/unit/test_contracts.py runs the check, so a model, route, setting or metric that changes without
its contract fails the tests; it also validates real records against the schemas.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import PydanticUndefined, core_schema

from streams import deadletter, events, metrics
from streams.settings import ENV_PREFIX, Settings
from streams.topology import ROUTES, Route

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = REPO_ROOT / "contracts"
SCHEMAS = CONTRACTS / "schemas"
ASYNCAPI = CONTRACTS / "asyncapi.yaml"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
KAFKA_BINDING_VERSION = "0.5.0"
BEGIN = "<!-- generated: {name} (python -m tooling.contracts; do not edit) -->"
END = "<!-- end generated -->"

# Triton's own metrics (its metrics port, 8002) that the dashboard and alerts read. Not the service's
# code, so listed here; tests/deploy checks them against a real Triton's scrape.
TRITON_METRICS: tuple[tuple[str, str], ...] = (
    ("nv_inference_request_success", "successful inference requests"),
    ("nv_inference_count", "inferences performed (a batch of n counts n)"),
    ("nv_inference_exec_count", "model executions (a batch counts once)"),
    ("nv_inference_queue_duration_us", "cumulative time requests waited in the queue"),
    ("nv_inference_compute_infer_duration_us", "cumulative time in the model's execute"),
    ("nv_inference_request_duration_us", "cumulative end-to-end request time in the server"),
    ("nv_gpu_utilization", "GPU utilisation, 0..1 (GPUs only)"),
    ("nv_gpu_memory_used_bytes", "GPU memory in use (GPUs only)"),
)


# --- JSON Schema ----------------------------------------------------------------------------------


class WireSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, with what the inputs' lenient validators accept on the wire.

    A `BeforeValidator` converts its input before the annotated type checks it, so pydantic documents
    only the annotated type. Two of them widen what a producer may send: ids may be integers
    (`events._id_to_str`) and `ts` may be a number of Unix seconds (`events._event_time`).
    """

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        function = schema["function"]["function"]
        if self.mode == "validation" and function is events._id_to_str:
            return {"anyOf": [inner, {"type": "integer"}]}
        if self.mode == "validation" and function is events._event_time:
            # pydantic's own date-time format needs an offset; the service reads a naive time as UTC.
            text = {"type": "string", "pattern": f"^{events._RFC3339.pattern}$"}
            seconds = {
                "type": "number",
                "minimum": 0,
                "exclusiveMaximum": events._TS_END_SECONDS,
                "description": "Unix seconds",
            }
            return {"anyOf": [text, seconds]}
        return inner


def _draft_07(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic writes definitions under `$defs` (2020-12); draft-07, which AsyncAPI 3.0 payloads are
    written in, calls them `definitions`. The references move with them."""
    text = json.dumps(schema).replace('"#/$defs/', '"#/definitions/')
    moved: dict[str, Any] = json.loads(text)
    if "$defs" in moved:
        moved["definitions"] = moved.pop("$defs")
    return moved


def record_schema(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    """The JSON Schema of one record: `validation` for what the service accepts (inputs),
    `serialization` for what it writes (outputs, dead letters)."""
    body = _draft_07(model.model_json_schema(mode=mode, schema_generator=WireSchema))
    version = body.get("properties", {}).get("schema_version")
    if version is not None:
        # A field validator, which pydantic cannot document: inputs of a supported version are read;
        # the service writes the model's own version.
        written = model.model_fields["schema_version"].default
        version["enum"] = sorted(events.SUPPORTED_INPUT_VERSIONS) if mode == "validation" else [written]
    return {"$schema": DRAFT_07, "$id": f"{model.__name__}.json", **body}


@dataclass(frozen=True)
class Record:
    """A record type on the service's topics."""

    model: type[BaseModel]
    mode: JsonSchemaMode
    role: str  # "input", "output" or "dead letter"

    @property
    def name(self) -> str:
        return self.model.__name__

    @property
    def path(self) -> Path:
        return SCHEMAS / f"{self.name}.json"


def records() -> list[Record]:
    found: list[Record] = []
    for route in ROUTES:
        found.append(Record(route.event, "validation", "input"))
        found.append(Record(route.output_event, "serialization", "output"))
    found.append(Record(events.DeadLetter, "serialization", "dead letter"))
    return found


# --- Topics ---------------------------------------------------------------------------------------

_KEYED = re.compile(r"Topics? `(?P<topic>[^`]+)`(?:, keyed by (?P<key>[a-z_ ]+))?")


def documented_key(model: type[BaseModel], topic: str) -> str:
    """The key a model's docstring declares for its topic ("Topic `reviews`, keyed by product_id.")."""
    match = _KEYED.search(model.__doc__ or "")
    if not match or not match.group("key"):
        raise ContractError(f"{model.__name__}'s docstring must say: Topic `{topic}`, keyed by <field>.")
    if match.group("topic") != topic:
        raise ContractError(f"{model.__name__}'s docstring names topic {match.group('topic')}, not {topic}")
    return match.group("key").strip()


@dataclass(frozen=True)
class Topic:
    name: str
    key: str  # a field of the record, or "the source key"
    record: type[BaseModel]
    direction: str  # "input", "output", "dead letter"
    route: Route


def topics() -> list[Topic]:
    found = []
    for route in ROUTES:
        found.append(
            Topic(route.input, documented_key(route.event, route.input), route.event, "input", route)
        )
        output_key = documented_key(route.output_event, route.output)
        if output_key != route.key:
            raise ContractError(
                f"{route.output_event.__name__} says it is keyed by {output_key}; its route uses {route.key}"
            )
        found.append(Topic(route.output, route.key, route.output_event, "output", route))
        found.append(Topic(route.dlq, "the source key", events.DeadLetter, "dead letter", route))
    return found


class ContractError(RuntimeError):
    """The code does not declare what a contract needs."""


# --- AsyncAPI ---------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", name)
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _summary(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def project_version() -> str:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


# What each error-context header of a dead letter holds (names: streams.deadletter).
HEADER_MEANINGS: dict[str, str] = {
    deadletter.TOPIC: "the source topic (as consumed, with ECOM_TOPIC_PREFIX)",
    deadletter.PARTITION: "the source partition, decimal",
    deadletter.OFFSET: "the source offset, decimal",
    deadletter.EXCEPTION: "the error type (docs/events.md, Dead letters)",
    deadletter.MESSAGE: "what was wrong, for a person",
    deadletter.VERSION: "the version of this header set",
    deadletter.RETRIABLE: "`true` or `false`",
    deadletter.EVENT_ID: "the input's event_id, when it could be read",
    deadletter.SOURCE_TS: "the source record's time, RFC 3339 UTC",
    deadletter.DEAD_LETTERED_TS: "when the service wrote the dead letter, RFC 3339 UTC",
    deadletter.VALUE_SIZE: "bytes of the original value, decimal",
    deadletter.OMITTED: "what of the original the dead letter leaves out: `value`, `headers`, with commas",
    deadletter.ATTEMPTS: "on a re-driven input: how often it was re-driven, decimal",
    deadletter.ORIGIN: "on a re-driven input: `topic[partition]@offset` of its first failure",
}


_DECIMAL = {"pattern": "^-?[0-9]+$"}
HEADER_FORMATS: dict[str, dict[str, Any]] = {
    deadletter.PARTITION: _DECIMAL,
    deadletter.OFFSET: _DECIMAL,
    deadletter.VERSION: _DECIMAL,
    deadletter.VALUE_SIZE: _DECIMAL,
    deadletter.ATTEMPTS: _DECIMAL,
    deadletter.RETRIABLE: {"enum": ["true", "false"]},
    deadletter.OMITTED: {"pattern": "^(value|headers)(,(value|headers))*$"},
}


def dead_letter_message() -> dict[str, Any]:
    """A dead letter is the input record whole, with the error context in headers; the DeadLetter schema
    is that context as `streams.deadletter.read_dead_letter` reads it."""
    minimal = events.DeadLetter(
        event_id=None,
        error=events.ErrorInfo(type="x", message="x", retriable=False),
        source=events.SourceInfo(topic="x", partition=0, offset=0, timestamp=None),
        value_size=None,
        dead_lettered_ts=events.EPOCH,
    )
    always = [name for name, _ in deadletter.context_headers(minimal)]
    undocumented = set(always) - set(HEADER_MEANINGS)
    if undocumented:
        raise ContractError(
            f"dead-letter headers without a meaning in HEADER_MEANINGS: {sorted(undocumented)}"
        )
    return {
        "summary": "The input record, whole, with what went wrong in its headers.",
        "description": (
            "The value is the original value and the key the original key, byte for byte (the value is "
            f"absent when `{deadletter.OMITTED}` names it); the headers are the original headers followed "
            "by the error context, UTF-8 text (Kafka Connect's names where Connect has one). "
            f"{events.DeadLetter.__name__}.json is the error context as read back."
        ),
        "contentType": "application/octet-stream",
        "payload": {"description": "the original record's value, unchanged (any content type)"},
        "headers": {
            "type": "object",
            "properties": {
                name: {"type": "string", "description": text, **HEADER_FORMATS.get(name, {})}
                for name, text in HEADER_MEANINGS.items()
            },
            "required": always,
            "additionalProperties": {"description": "the original record's own headers, unchanged"},
        },
        "x-error-context": {"$ref": f"schemas/{events.DeadLetter.__name__}.json"},
    }


def asyncapi() -> dict[str, Any]:
    defaults = Settings.model_fields
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in topics():
        key = (
            "the key of the source record, unchanged (absent when it had none)"
            if topic.direction == "dead letter"
            else f"the record's `{topic.key}`"
        )
        messages[topic.record.__name__] = {
            "name": topic.record.__name__,
            "title": topic.record.__name__,
            "summary": _summary(topic.record),
            "contentType": "application/json",
            "payload": {"$ref": f"schemas/{topic.record.__name__}.json"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": key},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        if topic.direction == "dead letter":
            messages[topic.record.__name__].update(dead_letter_message())
    for topic in topics():
        channel_id = _camel(topic.name)
        message = topic.record.__name__
        key = topic.key if topic.key.startswith("the ") else f"the record's `{topic.key}`"
        notes = {
            "input": f"Input of the service, enriched into `{topic.route.output}`.",
            "output": f"Output of the service for `{topic.route.input}`: {topic.route.adds}.",
            "dead letter": f"Events of `{topic.route.input}` that could not be enriched, with the reason.",
        }[topic.direction]
        channels[channel_id] = {
            "address": topic.name,
            "title": topic.name,
            "description": f"{notes} Key: {key}. The physical name is ECOM_TOPIC_PREFIX + `{topic.name}`.",
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "partitions": defaults["partitions"].default,
                    "replicas": defaults["replication_factor"].default,
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        action, verb = ("receive", "consume") if topic.direction == "input" else ("send", "publish")
        operations[_camel(f"{verb}-{topic.name}")] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"The service {'consumes' if action == 'receive' else 'publishes'} `{topic.name}`.",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message}"}],
            **(
                {
                    "bindings": {
                        "kafka": {
                            "groupId": {"type": "string", "enum": [defaults["app_id"].default]},
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    }
                }
                if action == "receive"
                else {}
            ),
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ecom-enrichment",
            "version": project_version(),
            "description": (
                "Real-time enrichment of e-commerce events. Generated by `python -m tooling.contracts` "
                "from streams/topology.py and streams/events.py; do not edit. Records are JSON objects "
                f"with a `schema_version` ({events.SCHEMA_VERSION}). Inputs ignore unknown fields; "
                "outputs and dead letters are exact. The consumer group is ECOM_APP_ID."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": defaults["kafka_bootstrap"].default.split("://", 1)[-1],
                "protocol": "kafka",
                "description": "Any Kafka-compatible broker: ECOM_KAFKA_BOOTSTRAP (the default shown).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# --- Tables of docs/architecture.md ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def topics_table() -> str:
    lines = ["| topic | key | value | schema |", "| --- | --- | --- | --- |"]
    for topic in topics():
        key = topic.key if topic.key.startswith("the ") else f"`{topic.key}`"
        value = {
            "input": f"input: the events to enrich into `{topic.route.output}`",
            "output": f"{topic.direction}: {topic.route.adds}",
            "dead letter": f"the records of `{topic.route.input}` that could not be enriched, whole, "
            "with the error in their headers",
        }[topic.direction]
        schema = f"[{topic.record.__name__}](../contracts/schemas/{topic.record.__name__}.json)"
        lines.append(f"| `{topic.name}` | {key} | {_cell(value)} | {schema} |")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args)
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined or field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    if field.default == "":
        return "empty"
    return f"`{field.default}`"


def settings_table() -> str:
    lines = ["| variable | default | type | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        variable = f"{ENV_PREFIX}{name}".upper()
        meaning = _cell(field.description or "")
        lines.append(f"| `{variable}` | {_default(field)} | {_type_name(field.annotation)} | {meaning} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed (a counter's `_total` included)
    type: str
    labels: tuple[str, ...]
    help: str


def worker_metrics() -> list[Metric]:
    """The collectors of `streams.metrics`, in the order they are defined."""
    found = []
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            kind = str(collector._type)
            name = collector._name + ("_total" if kind == "counter" else "")
            found.append(Metric(name, kind, tuple(collector._labelnames), collector._documentation))
    return found


def metrics_table() -> str:
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for m in worker_metrics():
        labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {_cell(m.help)} |")
    return "\n".join(lines)


def triton_metrics_table() -> str:
    lines = ["| metric | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in TRITON_METRICS]
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "topics": topics_table,
    "settings": settings_table,
    "metrics": metrics_table,
    "triton-metrics": triton_metrics_table,
}


def _replacement(block: str) -> Callable[[re.Match[str]], str]:
    return lambda _: block  # a function, so that backslashes in the block are not read as escapes


def render_blocks(text: str, tables: dict[str, Callable[[], str]] = TABLES) -> str:
    """`text` with every generated block replaced by a fresh rendering; each must be there once."""
    for name, render in tables.items():
        begin = BEGIN.format(name=name)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END), re.S)
        if len(pattern.findall(text)) != 1:
            raise ContractError(f"{ARCHITECTURE.name} needs exactly one block {begin} ... {END}")
        text = pattern.sub(_replacement(f"{begin}\n{render()}\n{END}"), text)
    return text


def schema_errors(name: str, record: Any) -> list[str]:
    """Where `record` breaks the committed schema `contracts/schemas/<name>.json` (empty: it matches)."""
    from jsonschema import Draft7Validator  # a development dependency, like this module

    validator = Draft7Validator(json.loads((SCHEMAS / f"{name}.json").read_text()))
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
        for e in validator.iter_errors(record)
    ]


# --- Writing and checking -------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _yaml(value: Any) -> str:
    header = "# Generated by `python -m tooling.contracts` from the service's code; do not edit.\n"
    return header + yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


def expected_files() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {record.path: _json(record_schema(record.model, record.mode)) for record in records()}
    files[ASYNCAPI] = _yaml(asyncapi())
    files[ARCHITECTURE] = render_blocks(ARCHITECTURE.read_text())
    return files


def stale(files: dict[Path, str], schemas: Path = SCHEMAS) -> Iterator[tuple[Path, str]]:
    """(path, unified diff) for every file whose content differs, and every schema in `schemas` that
    no record has."""
    for path, content in files.items():
        current = path.read_text() if path.exists() else ""
        if current != content:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), content.splitlines(keepends=True), str(path), "generated"
            )
            yield path, "".join(diff)
    for orphan in sorted(set(schemas.glob("*.json")) - set(files)):
        yield orphan, f"{orphan}: no record has this schema any more\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooling.contracts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when anything is stale")
    args = parser.parse_args(argv)
    files = expected_files()
    found = list(stale(files))
    if args.check:
        for path, diff in found:
            sys.stderr.write(diff)
            sys.stderr.write(f"stale: {path.relative_to(REPO_ROOT)}\n")
        if found:
            sys.stderr.write("run `python -m tooling.contracts` and commit the result\n")
        return 1 if found else 0
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for path, _ in found:
        if path in files:
            path.write_text(files[path])
        else:
            path.unlink()
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
