"""docker-compose.yml: every setting of the service reaches the workers from .env, unless the file fixes
it for a reason; .env.example lists them with the service's defaults."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploytools import COMPOSE_FILE, REPO_ROOT, environment_of, load_compose, passed_through

from streams.settings import ENV_PREFIX, Settings

# Settings the compose deployment does not take from .env, and why.
NOT_PASSED = {
    "ECOM_KAFKA_SECURITY_PROTOCOL": "compose's Kafka speaks PLAINTEXT on its own network",
    "ECOM_KAFKA_SASL_MECHANISM": "compose's Kafka speaks PLAINTEXT on its own network",
    "ECOM_KAFKA_SASL_USERNAME": "compose's Kafka speaks PLAINTEXT on its own network",
    "ECOM_KAFKA_SASL_PASSWORD": "compose's Kafka speaks PLAINTEXT on its own network",
    "ECOM_KAFKA_SSL_CAFILE": "compose's Kafka speaks PLAINTEXT on its own network",
    "ECOM_TRITON_SSL": "Triton speaks plain gRPC on the inference network",
    "ECOM_WEB_HOST": "Prometheus scrapes the workers from the network: all interfaces, the default",
    "ECOM_TRITON_ADMIN_KEY": "the workers never call Triton's control APIs; only `python -m streams model`",
}
ENV_EXAMPLE = REPO_ROOT / ".env.example"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    services: dict[str, Any] = load_compose(COMPOSE_FILE)["services"]
    return services


def settings_variables() -> set[str]:
    return {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}


def test_every_setting_reaches_the_worker_or_is_fixed_for_a_reason(services: dict[str, Any]) -> None:
    worker = services["worker"]
    raw = worker["environment"]
    accounted = set(raw) | set(NOT_PASSED)
    missing = sorted(settings_variables() - accounted)
    assert not missing, (
        f"settings the compose workers cannot be given: {missing}; add each to x-ecom-env as `NAME:` "
        "(passed from .env) or to NOT_PASSED with the reason"
    )
    assert not set(NOT_PASSED) & set(raw), "a setting listed as not passed is set"
    assert set(NOT_PASSED) <= settings_variables(), "NOT_PASSED names a setting the service lacks"


def test_a_variable_in_env_reaches_the_worker_and_an_unset_one_keeps_the_default(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    through = passed_through(worker)
    assert {"ECOM_BATCH_MAX_SIZE", "ECOM_LOG_LEVEL", "ECOM_MAX_IMAGE_BYTES"} <= through
    unset = environment_of(worker)
    assert not through & set(unset), "an unset variable is left out of the container"
    given = environment_of(worker, {"ECOM_BATCH_MAX_SIZE": "8", "ECOM_LOG_LEVEL": "DEBUG"})
    settings = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in given.items() if "${" not in v})
    assert settings.batch_max_size == 8 and settings.log_level == "DEBUG"
    default = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in unset.items() if "${" not in v})
    assert default.batch_max_size == Settings.model_fields["batch_max_size"].default
    assert environment_of(services["create-topics"], {"ECOM_TOPIC_PREFIX": "x-"})["ECOM_TOPIC_PREFIX"] == "x-"


def example_values() -> dict[str, str]:
    return dict(re.findall(r"^#? ?(ECOM_[A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))


def test_env_example_lists_every_passed_setting_with_the_services_default(services: dict[str, Any]) -> None:
    examples = example_values()
    for variable in passed_through(services["worker"]):
        assert variable in examples, f"{variable} is passed from .env but not in .env.example"
        default = Settings.model_fields[variable.removeprefix(ENV_PREFIX).lower()].default
        shown = "" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert examples[variable] == shown, f"{variable}: .env.example shows {examples[variable]!r}"
