"""Every setting of the service, read from the environment (prefix `ECOM_`) once, in `main()`.

The table in docs/architecture.md lists the contract variables; this class is the full list, with the
batching, retry and limit settings. Nothing else in the service reads the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ECOM_"
MIN_TOKEN_CHARS = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        default="kafka://localhost:9092", description="broker URL(s), Faust form, ;-separated"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = Field(
        default="PLAINTEXT", description="how the workers connect to the brokers"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism, with a SASL protocol"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name (a Secret in k8s)")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (a Secret in k8s)")
    kafka_ssl_cafile: str | None = Field(
        default=None, description="CA bundle for SSL/SASL_SSL; system CAs if unset"
    )
    partitions: int = Field(
        default=4, ge=1, description="partitions of every topic, Faust's own topics included"
    )
    replication_factor: int = Field(
        default=1, ge=1, description="replicas of every topic the service creates"
    )
    topic_prefix: str = Field(
        default="", description="prepended to every topic name (tests, shared clusters)"
    )
    app_id: str = Field(default="ecom-enrichment", description="Faust app id = consumer group")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once", description="exactly_once needs a broker with transactions (Apache Kafka)"
    )
    # A worker joins its group in about a second with these on the embedded broker.
    broker_rebalance_timeout_s: float = Field(
        default=5.0, gt=0, description="how long the group waits for members to rejoin in a rebalance"
    )
    broker_session_timeout_s: float = Field(
        default=10.0, gt=0, description="a worker silent this long leaves the group"
    )
    broker_heartbeat_interval_s: float = Field(
        default=1.0, gt=0, description="how often a worker tells the group it is alive"
    )
    commit_interval_s: float = Field(
        default=1.0, gt=0, description="how often acknowledged offsets are committed"
    )
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, description="longest a fetch waits for data (the latency floor on some brokers)"
    )
    publish_timeout_s: float = Field(
        default=30.0, gt=0, description="wait for one delivery before retrying it"
    )
    kafka_compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none",
        description="codec of the batches the service's own producers write; consumers read all four",
    )
    skip_undecodable: str = Field(
        default="",
        description="topic[partition]@offset,...: undecodable batches to move past (docs/service.md)",
    )

    # --- Triton -----------------------------------------------------------------------------------
    triton_grpc_url: str = Field(default="localhost:8001", description="Triton's gRPC endpoint, host:port")
    triton_model: str = Field(default="ecom_fusion", description="the model's name in Triton's repository")
    triton_ssl: bool = Field(default=False, description="TLS to Triton's gRPC endpoint")
    infer_timeout_s: float = Field(default=30.0, gt=0, description="deadline of one gRPC inference request")
    batch_max_size: int = Field(default=32, ge=1, description="rows per inference request")
    batch_linger_ms: float = Field(default=10.0, ge=0, description="wait this long for a batch to fill")
    max_in_flight: int = Field(default=2, ge=1, description="concurrent inference requests per kind")
    retry_backoff_initial_s: float = Field(
        default=0.2, gt=0, description="first wait before a retry; then exponential, with jitter"
    )
    retry_backoff_max_s: float = Field(default=10.0, gt=0, description="longest wait between retries")
    # Server errors that are neither clearly transient nor clearly the request's fault are retried
    # this often for a single row, then the row is dead-lettered: only while the model answers a
    # known-good row; otherwise they are the server's fault and retried until it answers (inference.py).
    retry_max_ambiguous: int = Field(
        default=3,
        ge=1,
        description="tries of a row an unexplained server error keeps failing, then dead-lettered",
    )

    # --- Model versions (docs/rollout.md) -----------------------------------------------------------
    # Versions are Triton's version numbers of ECOM_TRITON_MODEL; an empty one is off (the primary's:
    # Triton's latest loaded version). A version named here that Triton does not serve yet is harmless:
    # the shadow drops its batches, the canary's entities go to the primary.
    model_version: str = Field(
        default="", pattern=r"^[0-9]*$", description="the primary version; empty: Triton's latest loaded one"
    )
    shadow_version: str = Field(
        default="",
        pattern=r"^[0-9]*$",
        description="a version every primary batch is also sent to, unpublished",
    )
    shadow_queue_batches: int = Field(
        default=16, ge=1, description="batches waiting for the shadow; more are dropped and counted"
    )
    shadow_timeout_s: float = Field(default=10.0, gt=0, description="deadline of one shadow request")
    shadow_embedding_agreement: float = Field(
        default=0.99, ge=-1, le=1, description="cosine at which two embeddings of a row count as agreeing"
    )
    shadow_agreement_floor: float = Field(
        default=0.9, ge=0, le=1, description="alert when the shadow agrees with the primary less often"
    )
    canary_version: str = Field(
        default="",
        pattern=r"^[0-9]*$",
        description="a version that answers ECOM_CANARY_FRACTION of the products",
    )
    canary_fraction: float = Field(
        default=0.0, ge=0, le=1, description="share of products (by a stable hash of the id) for the canary"
    )
    live_f1_window: int = Field(
        default=500, ge=10, description="rated reviews per version in the live macro-F1 of a worker"
    )
    live_f1_floor: float = Field(
        default=0.55, ge=0, le=1, description="alert when the primary's live macro-F1 falls below this"
    )
    triton_admin_key: SecretStr | None = Field(
        default=None,
        description="key of Triton's model-repository API, for `python -m streams model`; workers need none",
    )

    # --- Agents -----------------------------------------------------------------------------------
    agent_concurrency: int = Field(default=64, ge=1, description="events in progress per inference agent")
    click_concurrency: int = Field(
        default=32,
        ge=1,
        description="clicks in progress at once; each shopper's clicks still run one after another",
    )

    # --- Limits (violations are dead-lettered) ----------------------------------------------------
    # Kafka's own default message.max.bytes is about 1 MB; base64 makes an image 4/3 its size in JSON.
    max_message_bytes: int = Field(
        default=1_000_000, ge=1024, description="largest input record; a larger one is dead-lettered"
    )
    max_text_bytes: int = Field(default=64 * 1024, ge=1, description="UTF-8 bytes of one row's text")
    max_image_bytes: int = Field(default=700_000, ge=1, description="one decoded image")
    max_image_pixels: int = Field(default=16_000_000, ge=1, description="width x height, from the header")
    max_review_images: int = Field(default=8, ge=0, description="photos per review")
    dlq_max_payload_bytes: int = Field(
        default=256_000,
        ge=0,
        description="ignored: a dead letter keeps its input whole (docs/events.md, Dead letters)",
    )

    # --- Outputs ------------------------------------------------------------------------------------
    top_k_categories: int = Field(default=5, ge=1, description="categories listed per product")
    recommendations_k: int = Field(default=10, ge=1, description="items per recommendation")
    embedding_sync_interval_s: float = Field(
        default=5.0, gt=0, description="how often embeddings written by other workers are indexed"
    )

    # --- Tables (the recommender's state) ------------------------------------------------------------
    # memory:// keeps every table as Python objects and restores it from the changelogs at each start;
    # rocksdb:// keeps it serialised on local disk (`data_dir`) and reads only the changelogs' tail after
    # a restart (docs/recommendations.md, "State beyond memory").
    table_store: Literal["memory://", "rocksdb://"] = Field(
        default="memory://", description="where the worker keeps its tables"
    )
    data_dir: str | None = Field(
        default=None,
        description="Faust's data directory (RocksDB tables under <dir>/v1/tables); '<app id>-data' if unset",
    )
    table_standby_replicas: int = Field(
        default=1, ge=0, description="other workers that keep a warm copy of each users-table partition"
    )
    table_cache_mb: int = Field(
        default=256, ge=16, description="RocksDB block cache and memtables of a worker, all tables together"
    )

    # --- Operations ---------------------------------------------------------------------------------
    web_port: int = Field(default=6066, ge=1, le=65535, description="metrics and health port")
    web_host: str = Field(default="0.0.0.0", description="address the metrics and health port listens on")  # noqa: S104  (a pod's probes and Prometheus reach it from outside)
    health_interval_s: float = Field(
        default=5.0, gt=0, description="how often the broker and Triton are probed for /readyz"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the service's log level"
    )
    log_json: bool = Field(default=False, description="one JSON object per log line")
    # Shoppers' sessions and histories: off unless turned on, then only for loopback clients that send
    # `Authorization: Bearer <token>` (docs/security.md). /livez, /readyz and /metrics are always open.
    state_pages_enabled: bool = Field(
        default=False, description="serve /recommend/..., Faust's /table/... and /router/..."
    )
    state_pages_token: SecretStr | None = Field(
        default=None, description=f"bearer token of the state pages, at least {MIN_TOKEN_CHARS} characters"
    )

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        # The messages name settings, never their values (they reach stderr and logs).
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "a SASL ECOM_KAFKA_SECURITY_PROTOCOL needs ECOM_KAFKA_SASL_USERNAME and "
                "ECOM_KAFKA_SASL_PASSWORD"
            )
        token = self.state_pages_token.get_secret_value() if self.state_pages_token else ""
        if self.state_pages_enabled and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"ECOM_STATE_PAGES_ENABLED needs ECOM_STATE_PAGES_TOKEN of at least {MIN_TOKEN_CHARS} "
                "characters"
            )
        return self

    @model_validator(mode="after")
    def _check_rollout(self) -> Settings:
        if self.canary_fraction > 0 and not self.canary_version:
            raise ValueError("ECOM_CANARY_FRACTION above 0 needs ECOM_CANARY_VERSION")
        return self

    def to_env(self) -> dict[str, str]:
        """The `ECOM_*` variables from which `Settings()` reads these settings back: how a worker process
        started by another program is given them. Secrets are revealed; unset optional settings are left
        out."""
        prefix = self.model_config.get("env_prefix", "")
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{prefix}{name}".upper()] = str(value)
        return env

    @property
    def producer_compression(self) -> str | None:
        """`kafka_compression_type` as Kafka clients take it (aiokafka's and Faust's `None` is "none")."""
        return None if self.kafka_compression_type == "none" else self.kafka_compression_type

    @property
    def bootstrap_servers(self) -> list[str]:
        """`host:port` list for plain Kafka clients (the admin client, the demo's producer)."""
        servers = []
        for url in self.kafka_bootstrap.replace(",", ";").split(";"):
            url = url.strip()
            if url:
                servers.append(url.split("://", 1)[-1].rstrip("/"))
        return servers


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting: the variable and the problem, never the value it was given (a value
    may be a password, and these lines reach stderr)."""
    lines = []
    for err in exc.errors(include_url=False):
        name = f"{ENV_PREFIX}{'_'.join(str(part) for part in err['loc'])}".upper() if err["loc"] else None
        message = str(err["msg"]).removeprefix("Value error, ")
        given = err.get("input")
        if isinstance(given, str) and len(given) >= 3 and given in message:
            message = message.replace(given, "<the value given>")  # no known message does; in case one will
        lines.append(f"{name}: {message}" if name else message)
    return lines
