"""Settings from the environment, topic names and specs."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.topics import TopicNames, client_options, topic_specs


def test_settings_come_from_ecom_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOM_KAFKA_BOOTSTRAP", "kafka://k1:9092;kafka://k2:9093")
    monkeypatch.setenv("ECOM_PARTITIONS", "8")
    monkeypatch.setenv("ECOM_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("ECOM_TOPIC_PREFIX", "test-")
    settings = Settings()
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.partitions == 8 and settings.processing_guarantee == "exactly_once"
    assert TopicNames.from_settings(settings).reviews == "test-reviews"


def test_to_env_round_trips_into_equal_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a started worker reads from `to_env()` equals the settings it was given, secrets included."""
    given = Settings(
        kafka_bootstrap="kafka://127.0.0.1:19092",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password="hunter2",
        triton_grpc_url="127.0.0.1:18001",
        triton_ssl=True,
        topic_prefix="t-",
        app_id="app-x",
        partitions=3,
        max_message_bytes=123_456,
        health_interval_s=1.0,
        embedding_sync_interval_s=0.5,
        log_json=True,
    )
    env = given.to_env()
    assert all(name.startswith("ECOM_") for name in env)
    assert "ECOM_KAFKA_SSL_CAFILE" not in env  # unset: left out
    for name in [n for n in os.environ if n.startswith("ECOM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == given


def test_invalid_settings_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOM_PROCESSING_GUARANTEE", "maybe_once")
    with pytest.raises(ValidationError):
        Settings()


def test_sasl_needs_credentials_and_keeps_the_password_secret() -> None:
    with pytest.raises(ValidationError, match="SASL"):
        Settings(kafka_security_protocol="SASL_SSL")
    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc", kafka_sasl_password="hunter2"
    )
    assert "hunter2" not in repr(settings)
    options = client_options(settings)
    assert options["sasl_plain_password"] == "hunter2"
    assert options["ssl_context"] is not None


def test_every_input_has_a_dead_letter_topic_and_all_share_the_partition_count() -> None:
    settings = Settings(partitions=6, topic_prefix="x.")
    specs = {s.name: s for s in topic_specs(settings)}
    names = TopicNames.from_settings(settings)
    for topic in names.inputs:
        assert f"{topic}.dlq" in specs
    assert set(names.outputs) <= set(specs)
    assert {s.partitions for s in specs.values()} == {6}
    assert dict(zip(names.inputs, names.outputs, strict=True))[names.clickstream] == "x.recommendations"
