"""docker-compose.yml and docker-compose.cpu.yml: valid against the Compose Specification schema, and
consistent with the contracts (ports, settings, start order, fail-fast settings, hardware)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
from deploytools import (
    COMPOSE_CPU_FILE,
    COMPOSE_FILE,
    REPO_ROOT,
    SCHEMAS,
    ImageRef,
    MissingVariable,
    compose_variables,
    environment_of,
    interpolate,
    load_compose,
    merge_compose,
    strip_tags,
)

# Settings only the worker reads (its tables); everything else the one-shot and the worker share.
WORKER_ONLY_SETTINGS = {
    "ECOM_TABLE_STORE",
    "ECOM_DATA_DIR",
    "ECOM_TABLE_CACHE_MB",
    "ECOM_TABLE_STANDBY_REPLICAS",
}

REQUIRED_FOR_TEST = {
    "GRAFANA_ADMIN_PASSWORD": "test-only",
    "TRITON_ADMIN_KEY": "test-only-admin-key-0123456789",
}


def compose_schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    # The file says draft-07 with a "$schema" URL spelling jsonschema does not recognise; name it.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def resolved(document: Any) -> dict[str, Any]:
    """The document after interpolation with the defaults and test values for required variables."""
    result = interpolate(strip_tags(document), REQUIRED_FOR_TEST)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def cpu(base: dict[str, Any]) -> dict[str, Any]:
    merged = merge_compose(base, load_compose(COMPOSE_CPU_FILE))
    assert isinstance(merged, dict)
    return merged


@pytest.fixture(scope="module")
def services(base: dict[str, Any]) -> dict[str, Any]:
    return resolved(base)["services"]


@pytest.mark.parametrize("path", [COMPOSE_FILE, COMPOSE_CPU_FILE], ids=lambda p: p.name)
def test_each_file_matches_the_compose_spec_schema(path: Any) -> None:
    validator = compose_schema_validator()
    document = strip_tags(load_compose(path))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # After interpolation too: numbers and booleans from variables must still be valid.
    errors = list(validator.iter_errors(resolved(load_compose(path))))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_cpu_override_merged_matches_the_schema(cpu: dict[str, Any]) -> None:
    errors = list(compose_schema_validator().iter_errors(resolved(cpu)))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_file(base: dict[str, Any]) -> None:
    """The validator is not vacuous: a misspelt key and a wrong type are caught."""
    broken = resolved(base)
    broken["services"]["worker"]["helthcheck"] = {"test": ["CMD", "true"]}
    broken["services"]["kafka"]["ports"] = "9094:9094"
    messages = [e.message for e in compose_schema_validator().iter_errors(broken)]
    assert any("helthcheck" in m for m in messages), messages
    assert any("is not of type 'array'" in m for m in messages), messages


def test_required_settings_fail_fast(base: dict[str, Any]) -> None:
    required = {name for name, op, _ in compose_variables(base) if op in (":?", "?")}
    assert {"GRAFANA_ADMIN_PASSWORD", "TRITON_ADMIN_KEY"} <= required
    for name, op, message in compose_variables(base):
        if op in (":?", "?"):
            assert message, f"${{{name}:?}} needs a message that says what to set"
    with pytest.raises(MissingVariable, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(strip_tags(base), {"TRITON_ADMIN_KEY": REQUIRED_FOR_TEST["TRITON_ADMIN_KEY"]})
    # Empty counts as missing (`:?`), as an unfilled .env.example line would be.
    with pytest.raises(MissingVariable):
        interpolate(strip_tags(base), {"GRAFANA_ADMIN_PASSWORD": ""})
    with pytest.raises(MissingVariable, match="TRITON_ADMIN_KEY"):
        interpolate(strip_tags(base), {**REQUIRED_FOR_TEST, "TRITON_ADMIN_KEY": ""})


def test_env_example_lists_every_variable(base: dict[str, Any]) -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    cpu_vars = {name for name, _, _ in compose_variables(load_compose(COMPOSE_CPU_FILE))}
    for name in {name for name, _, _ in compose_variables(base)} | cpu_vars:
        assert name in example, f"{name} is used by the compose files but not described in .env.example"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    one_shots = {
        name
        for svc in services.values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }
    for name, svc in services.items():
        if name in one_shots:
            assert svc.get("restart") == "no", f"one-shot {name} must not be restarted"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert svc.get("restart") == "unless-stopped", f"{name} should restart unless stopped"


def test_dependencies_wait_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions, not a bare list"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), (name, dep)
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}'s health; it has none"


def test_start_order_topics_before_workers(services: dict[str, Any]) -> None:
    create = services["create-topics"]
    assert create["command"] == ["create-topics"]
    assert create["depends_on"]["kafka"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert worker["depends_on"]["create-topics"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["triton"]["condition"] == "service_healthy"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The one-shot and the worker run the same image, so they agree on topic names and settings.
    assert create["image"] == worker["image"]
    assert create["build"] == worker["build"]
    create_env, worker_env = environment_of(create), environment_of(worker)
    assert worker_env.items() >= create_env.items()
    assert {k for k in worker_env if k not in create_env} <= WORKER_ONLY_SETTINGS


def test_kafka_is_one_kraft_node_that_does_not_auto_create_topics(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = dict(listener.split("://", 1) for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    bootstrap = environment_of(services["worker"])["ECOM_KAFKA_BOOTSTRAP"]
    assert urlparse(bootstrap).netloc == advertised["PLAINTEXT"], "workers must use the advertised listener"


def test_worker_settings_follow_the_contract(services: dict[str, Any]) -> None:
    from streams.settings import Settings  # the service's own list of settings

    known = {f"ECOM_{name.upper()}" for name in Settings.model_fields}
    env = environment_of(services["worker"])
    unknown = {k for k in env if k.startswith("ECOM_")} - known
    assert not unknown, f"compose sets ECOM_ variables the service does not read: {sorted(unknown)}"
    settings = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in env.items()})
    assert settings.web_port == 6066
    assert settings.triton_grpc_url == "triton:8001"
    assert settings.bootstrap_servers == ["kafka:9092"]
    assert "6066/readyz" in " ".join(services["worker"]["healthcheck"]["test"])


def test_triton_ports_and_gpu(services: dict[str, Any]) -> None:
    triton = services["triton"]
    command = triton["command"]
    for flag in ("--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--load-model=ecom_fusion"):
        assert flag in command
    assert "--model-config-name=gpu" in command
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "8000/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert triton["shm_size"], "the Python backend needs more /dev/shm than Docker's 64 MB default"


def test_cpu_override_removes_the_gpu_and_keeps_everything_else(
    base: dict[str, Any], cpu: dict[str, Any]
) -> None:
    gpu_triton = resolved(base)["services"]["triton"]
    cpu_triton = resolved(cpu)["services"]["triton"]
    assert not cpu_triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    expected = [
        "--allow-gpu-metrics=false" if flag == "--allow-gpu-metrics=true" else flag
        for flag in gpu_triton["command"]
        if flag != "--model-config-name=gpu"
    ]
    assert cpu_triton["command"] == expected
    assert cpu_triton["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert cpu_triton["healthcheck"] == gpu_triton["healthcheck"]
    assert cpu_triton["image"] != gpu_triton["image"], "the CPU build must not overwrite the GPU image tag"
    # Nothing but Triton changes.
    others = set(base["services"]) - {"triton"}
    assert {k: cpu["services"][k] for k in others} == {k: base["services"][k] for k in others}


def test_images_are_pinned_and_builds_exist(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        tag = ImageRef.parse(image).tag
        assert tag and tag != "latest", f"{name}: image {image} needs an explicit tag"
        if "build" in svc:
            dockerfile = REPO_ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_mounted_configuration_exists(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_default_workers_do_not_outnumber_partitions(services: dict[str, Any]) -> None:
    replicas = int(services["worker"]["deploy"]["replicas"])
    partitions = int(environment_of(services["worker"])["ECOM_PARTITIONS"])
    assert 1 <= replicas <= partitions, "a worker beyond the partition count would sit idle"


def test_workers_are_hardened(services: dict[str, Any]) -> None:
    for name in ("worker", "create-topics"):
        svc = services[name]
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        assert "/tmp" in svc["tmpfs"]
        # The working directory is writable: a volume of its own (the worker's tables) or a tmpfs.
        assert "/var/lib/ecom" in svc["tmpfs"] or "/var/lib/ecom" in svc.get("volumes", [])


def test_worker_tables_live_in_rocksdb_on_a_volume_of_each_worker(services: dict[str, Any]) -> None:
    from streams.settings import Settings

    worker = services["worker"]
    env = environment_of(worker)
    settings = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in env.items() if "${" not in v})
    assert settings.table_store == "rocksdb://"
    assert settings.data_dir is not None and settings.data_dir.startswith("/var/lib/ecom/")
    # An anonymous volume ("/path", no source): each replica gets its own, as RocksDB locks its files;
    # a named volume would be shared by every replica.
    assert "/var/lib/ecom" in worker["volumes"]
    assert "/var/lib/ecom" not in worker["tmpfs"], "the tables on disk, not in memory"
    if int(str(worker["deploy"]["replicas"]).split(":-")[-1].rstrip("}")) >= 2:
        assert settings.table_standby_replicas == 1
