"""contracts/asyncapi.yaml is a valid AsyncAPI 3.0 document (checked against the specification's own
JSON Schema, vendored in schemas/), and what it references exists."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from deploytools import REPO_ROOT, SCHEMAS
from jsonschema import Draft7Validator

ASYNCAPI = REPO_ROOT / "contracts" / "asyncapi.yaml"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return loaded


def specification() -> Draft7Validator:
    return Draft7Validator(json.loads((SCHEMAS / "asyncapi-3.0.0.json").read_text()))


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in specification().iter_errors(doc)]


def test_the_document_is_valid_asyncapi_3() -> None:
    assert errors(document()) == []


def test_the_validation_is_not_vacuous() -> None:
    doc = copy.deepcopy(document())
    first = next(iter(doc["operations"]))
    doc["operations"][first]["action"] = "publish"  # AsyncAPI 2's verb
    assert errors(doc)


def test_payload_references_name_committed_schemas() -> None:
    doc = document()
    refs = []
    for message in doc["components"]["messages"].values():
        for where in (message["payload"], message.get("x-error-context", {})):
            if "$ref" in where:
                refs.append(where["$ref"])
    assert refs
    for ref in refs:
        assert (ASYNCAPI.parent / ref).is_file(), ref


def test_operations_are_from_the_services_side() -> None:
    doc = document()
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        address = doc["channels"][channel]["address"]
        inputs = {
            c["address"] for c in doc["channels"].values() if "Input of the service" in c["description"]
        }
        assert operation["action"] == ("receive" if address in inputs else "send"), name
