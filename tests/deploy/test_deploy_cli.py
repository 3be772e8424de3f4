"""The deployment files against the service itself: every command they give the worker image is one
`python -m streams` accepts, and the topic list of docs/deployment.md is the one `create-topics` makes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from deploytools import (
    COMPOSE_CPU_FILE,
    COMPOSE_FILE,
    K8S,
    OVERLAYS,
    REPO_ROOT,
    kustomize,
    load_compose,
    tool,
)

from streams.__main__ import build_parser
from streams.settings import Settings
from streams.topics import topic_specs
from streams.topology import INTERNAL_TOPICS, TABLES

WORKER_DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "worker.Dockerfile"
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"


def dockerfile_json_instruction(name: str) -> list[str]:
    for line in WORKER_DOCKERFILE.read_text().splitlines():
        if line.startswith(f"{name} "):
            value: list[str] = json.loads(line.removeprefix(f"{name} "))
            return value
    raise AssertionError(f"worker.Dockerfile has no {name}")


def worker_image_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after `python -m streams`) for every container of the worker image."""
    commands = [("worker.Dockerfile CMD", dockerfile_json_instruction("CMD"))]
    for path in (COMPOSE_FILE, COMPOSE_CPU_FILE):
        for name, service in load_compose(path)["services"].items():
            if "worker" in str(service.get("image", "")) and "command" in service:
                commands.append((f"{path.name} {name}", list(service["command"])))
    if tool("kubectl") is not None:
        for overlay in OVERLAYS:
            for obj in kustomize(K8S / "overlays" / overlay):
                if obj["kind"] != "Deployment":
                    continue
                pod = obj["spec"]["template"]["spec"]
                for container in pod.get("initContainers", []) + pod["containers"]:
                    if "/worker:" in container["image"] or container["image"].startswith(
                        "ecom-enrichment/worker"
                    ):
                        commands.append((f"{overlay} {container['name']}", list(container["args"])))
    return commands


def test_the_worker_image_runs_the_service_cli() -> None:
    assert dockerfile_json_instruction("ENTRYPOINT") == ["python", "-m", "streams"]


@pytest.mark.parametrize(("where", "args"), worker_image_commands(), ids=lambda v: str(v))
def test_every_command_given_to_the_worker_image_is_accepted(where: str, args: list[str]) -> None:
    parsed: Any = build_parser().parse_args(args)
    assert parsed.command in ("worker", "create-topics"), f"{where}: {args} is not a deployment command"


def test_an_unknown_command_is_rejected() -> None:
    """The check above is not vacuous: the parser exits on a command the service does not have."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["create-topic"])


def test_the_documented_topic_list_is_what_create_topics_makes() -> None:
    text = DEPLOYMENT_DOC.read_text()
    specs = topic_specs(Settings())
    stated = re.search(r"creates every topic the service uses \((\d+) with the defaults\)", text)
    assert stated, "docs/deployment.md no longer says how many topics create-topics makes"
    assert int(stated.group(1)) == len(specs)
    tables = re.search(r"`<ECOM_APP_ID>-recommend-\{([a-z,-]+)\}-changelog`", text)
    assert tables, "docs/deployment.md no longer names the changelog topics"
    assert {f"recommend-{t}" for t in tables.group(1).split(",")} == set(TABLES)
    for name in INTERNAL_TOPICS:
        assert f"`<ECOM_APP_ID>-{name}`" in text, f"internal topic {name} is not in docs/deployment.md"
