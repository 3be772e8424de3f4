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

log = logging.getLogger(__name__)

# Faust tables of the app (name -> changelog suffix); a unit test checks this against the app itself.
# The recommender's (docs/recommendations.md): the user table is co-partitioned with the clickstream,
# the others are global tables written from the internal item topic and from product-categories.
TABLE_USERS = "recommend-users"
TABLE_NEIGHBOURS = "recommend-neighbours"
TABLE_ITEM_STATS = "recommend-item-stats"
TABLE_POPULAR = "recommend-popular"
TABLE_EMBEDDINGS = "recommend-embeddings"
TABLES = (TABLE_USERS, TABLE_NEIGHBOURS, TABLE_ITEM_STATS, TABLE_POPULAR, TABLE_EMBEDDINGS)
# Internal topics (named after the app id, like the changelogs): the recommender's item updates,
# routed by item so that every item's rows have one writer.
ITEM_UPDATES = "recommend-item-updates"
INTERNAL_TOPICS = (ITEM_UPDATES,)


@dataclass(frozen=True)
class TopicNames:
    reviews: str
    product_uploads: str
    clickstream: str
    review_sentiment: str
    product_categories: str
    recommendations: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        p = settings.topic_prefix
        return cls(
            reviews=f"{p}reviews",
            product_uploads=f"{p}product-uploads",
            clickstream=f"{p}clickstream",
            review_sentiment=f"{p}review-sentiment",
            product_categories=f"{p}product-categories",
            recommendations=f"{p}recommendations",
        )

    @staticmethod
    def dlq(input_topic: str) -> str:
        return f"{input_topic}.dlq"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.reviews, self.product_uploads, self.clickstream)

    @property
    def outputs(self) -> tuple[str, str, str]:
        return (self.review_sentiment, self.product_categories, self.recommendations)

    @property
    def dlqs(self) -> tuple[str, str, str]:
        return tuple(self.dlq(t) for t in self.inputs)  # type: ignore[return-value]

    def output_for(self, input_topic: str) -> str:
        return dict(zip(self.inputs, self.outputs, strict=True))[input_topic]


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
