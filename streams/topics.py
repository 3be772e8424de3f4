"""Topic names, the full list of topics a worker needs, and their explicit creation.

Every topic, Faust's own table changelogs included, is created with the configured partition count
before a worker starts: a broker that auto-creates topics would otherwise pick its own count (the
embedded one: 4), and a table whose changelog disagrees with its source crashes with PartitionsMismatch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from streams.settings import Settings
from streams.topology import INTERNAL_TOPICS, ROUTES, TABLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicNames:
    """The physical topic names: the routes' names (streams.topology) behind ECOM_TOPIC_PREFIX."""

    prefix: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls(settings.topic_prefix)

    def __call__(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @staticmethod
    def dlq(input_topic: str) -> str:
        return f"{input_topic}.dlq"

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self(r.input) for r in ROUTES)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self(r.output) for r in ROUTES)

    @property
    def dlqs(self) -> tuple[str, ...]:
        return tuple(self(r.dlq) for r in ROUTES)

    # The topics by name, for tools and tests that address one of them.
    @property
    def reviews(self) -> str:
        return self("reviews")

    @property
    def product_uploads(self) -> str:
        return self("product-uploads")

    @property
    def clickstream(self) -> str:
        return self("clickstream")

    @property
    def review_sentiment(self) -> str:
        return self("review-sentiment")

    @property
    def product_categories(self) -> str:
        return self("product-categories")

    @property
    def recommendations(self) -> str:
        return self("recommendations")


def changelog_topic(settings: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def internal_topic(settings: Settings, name: str) -> str:
    """An internal topic of the app (one per app id, like the changelogs)."""
    return f"{settings.app_id}-{name}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    names = TopicNames.from_settings(settings)
    n, rf = settings.partitions, settings.replication_factor
    specs = [TopicSpec(t, n, rf) for t in (*names.inputs, *names.outputs, *names.dlqs)]
    specs += [
        TopicSpec(changelog_topic(settings, table), n, rf, {"cleanup.policy": "compact"}) for table in TABLES
    ]
    specs += [TopicSpec(internal_topic(settings, name), n, rf) for name in INTERNAL_TOPICS]
    return specs


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile)


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for plain aiokafka clients (admin, the demo's producer and reader)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


class TopicSetupError(RuntimeError):
    """Topics that cannot be made to work: creation failed, or a table's changelog disagrees with the
    partition count of the topic the table is fed from."""


@dataclass(frozen=True)
class TopicsReady:
    created: list[str]
    counts: dict[str, int]  # every topic of the service -> its partition count
    table_partitions: int  # the partitions of the clickstream, which its table and changelog must match


async def create_topics(settings: Settings, *, create: bool = True, wait_s: float = 30) -> TopicsReady:
    """Create the topics that do not exist yet (with ECOM_PARTITIONS partitions), check the others.

    Topics that already exist keep their partition count (the service never deletes or repartitions a
    topic); a count other than ECOM_PARTITIONS is logged. The tables' changelogs and the internal topic
    follow the clickstream's actual count, so a worker also runs on topics someone else created; a
    changelog that exists with another count, or a product-categories topic with another count (the
    embeddings table is written from it), raises `TopicSetupError`. With `create=False` nothing is
    created and a missing topic raises.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    names = TopicNames.from_settings(settings)
    # Everything a table is written from or to follows the clickstream's real partition count.
    changelogs = {changelog_topic(settings, table) for table in TABLES}
    changelogs |= {internal_topic(settings, name) for name in INTERNAL_TOPICS}
    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(wait_s * 1000))
    await admin.start()
    try:
        existing = await _partition_counts(admin, [s.name for s in specs])
        source = existing.get(names.clickstream, settings.partitions)
        specs = [dataclasses.replace(s, partitions=source) if s.name in changelogs else s for s in specs]
        missing = [s for s in specs if s.name not in existing]
        if missing and not create:
            raise TopicSetupError(
                f"topics missing (run `python -m streams create-topics`): {[s.name for s in missing]}"
            )
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                    for s in missing
                ],
                timeout_ms=int(wait_s * 1000),
            )
            for name, code, *rest in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise TopicSetupError(f"creating topic {name} failed with error code {code}: {rest}")
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            counts = await _partition_counts(admin, [s.name for s in specs])
            if all(s.name in counts for s in specs):
                break
            if asyncio.get_running_loop().time() > deadline:
                absent = [s.name for s in specs if s.name not in counts]
                raise TopicSetupError(f"topics not visible after {wait_s:.0f}s: {absent}")
            await asyncio.sleep(0.2)
        for spec in missing:
            log.info("created topic %s (%d partitions)", spec.name, spec.partitions)
        for spec in specs:
            if spec.name in changelogs and counts[spec.name] != counts[names.clickstream]:
                raise TopicSetupError(
                    f"{spec.name} has {counts[spec.name]} partitions but {names.clickstream} has "
                    f"{counts[names.clickstream]}: a table's changelog must match its source topic "
                    "(delete the changelog, or use a new ECOM_APP_ID)"
                )
            if spec.name == names.product_categories and counts[spec.name] != counts[names.clickstream]:
                # The embeddings table is written while reading product-categories (Faust writes a
                # table's changelog partition = the partition of the event being processed).
                raise TopicSetupError(
                    f"{spec.name} has {counts[spec.name]} partitions but {names.clickstream} has "
                    f"{counts[names.clickstream]}: the recommender's tables need the same count on both"
                )
            if counts[spec.name] != settings.partitions and spec not in missing:
                log.warning(
                    "topic %s exists with %d partitions (ECOM_PARTITIONS=%d); kept as it is",
                    spec.name,
                    counts[spec.name],
                    settings.partitions,
                )
        return TopicsReady([s.name for s in missing], counts, counts[names.clickstream])
    finally:
        await admin.close()


async def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    # Only asks about topics that exist (a metadata request naming a missing topic would make an
    # auto-creating broker create it, with its own partition count).
    present = set(await admin.list_topics()) & set(names)
    if not present:
        return {}
    described = await admin.describe_topics(sorted(present))
    return {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}
