"""Prometheus collectors of the worker (names and labels: docs/architecture.md, "Metrics").

Module-level, one prefix, bounded labels (topic, outcome, kind, reason = error class name; never an id).
Durations in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("broker", "step", "publish", "state_writes")
# Finer at the low end: the stages of a healthy event take milliseconds to tens of milliseconds.
STAGE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.12,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
)
# From 5 ms to 2 min: a healthy pipeline sits in the tens of milliseconds, an outage in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

EVENTS_CONSUMED = Counter("ecom_events_consumed", "Input events received by an agent", ["topic"])
EVENTS_PROCESSED = Counter("ecom_events_processed", "Input events finished, by outcome", ["topic", "outcome"])
EVENTS_PRODUCED = Counter(
    "ecom_events_produced", "Records delivered to a topic (outputs and DLQs)", ["topic"]
)
DEAD_LETTERS = Counter("ecom_dead_letters", "Events sent to a dead-letter topic", ["topic", "reason"])
END_TO_END_LATENCY = Histogram(
    "ecom_end_to_end_latency_seconds",
    "From the input event's ts to the delivery of its output",
    ["topic"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_BATCH_SIZE = Histogram(
    "ecom_inference_batch_size", "Rows per inference request", ["kind"], buckets=BATCH_BUCKETS
)
INFERENCE_LATENCY = Histogram(
    "ecom_inference_latency_seconds", "Duration of one inference request", ["kind"], buckets=INFERENCE_BUCKETS
)
INFERENCE_REQUESTS = Counter(
    "ecom_inference_requests", "Inference requests by outcome (ok, error, retry)", ["kind", "outcome"]
)
INFERENCE_IN_FLIGHT = Gauge("ecom_inference_in_flight", "Inference requests awaiting Triton")
CONSUMER_LAG = Gauge("ecom_consumer_lag", "Log end offset minus committed offset", ["topic", "partition"])
DEPENDENCY_UP = Gauge("ecom_dependency_up", "1 when the dependency answered its last probe", ["dependency"])
UNDECODABLE_BATCHES = Counter(
    "ecom_undecodable_batches",
    "Fetched batches the consumer could not decode (the partition stops there unless skipped)",
    ["topic", "partition"],
)
PARTITION_STOPPED_OFFSET = Gauge(
    "ecom_partition_stopped_offset",
    "Offset at which a partition is stopped by an undecodable batch (a series only while it is)",
    ["topic", "partition"],
)
STAGE_LATENCY = Histogram(
    "ecom_stage_latency_seconds",
    "Where an event's time goes: broker (its record time to its agent), step (parse, model or "
    "recommender), publish (the output acknowledged) and state_writes (the state it changed "
    "acknowledged; clicks), the last two from the end of the step and concurrent",
    ["topic", "stage"],
    buckets=STAGE_BUCKETS,
)
RECOMMENDATION_LATENCY = Histogram(
    "ecom_recommendation_latency_seconds",
    "From a click's arrival on the clickstream (its record time) to the delivery of its recommendation",
    buckets=LATENCY_BUCKETS,
)
TABLE_RECOVERY_AHEAD = Counter(
    "ecom_table_recovery_ahead",
    "Table changelog partitions found ahead of the broker's reported end at a rebalance, by outcome: "
    "under_reported (the changelog holds them), reread (in memory: read again from the end), "
    "inconsistent (on disk: the worker stops)",
    ["table", "outcome"],
)


# --- versions: who answered, shadow agreement, live quality (streams.rollout) ----------------------------
ROLES = ("primary", "canary", "shadow")
SHADOW_ASPECTS = ("sentiment", "category", "embedding")
SHADOW_OUTCOMES = ("agree", "disagree", "incomparable")
SHADOW_DROP_REASONS = ("queue_full", "timeout", "error")
# Cosine similarity of two embeddings of one row: the same model gives 1.0 up to float noise.
COSINE_BUCKETS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
MODEL_ROWS = Counter(
    "ecom_model_rows",
    "Rows answered, by the Triton version that answered and its role (primary, canary, shadow)",
    ["kind", "version", "role"],
)
SHADOW_AGREEMENT = Counter(
    "ecom_shadow_agreement",
    "Rows the shadow version answered, compared with the primary's answer: by aspect (sentiment label, "
    "category top-1, embedding cosine over ECOM_SHADOW_EMBEDDING_AGREEMENT) and outcome",
    ["kind", "aspect", "outcome"],
)
SHADOW_COSINE = Histogram(
    "ecom_shadow_agreement_cosine",
    "Cosine similarity of the shadow's embedding of a row to the primary's",
    ["kind"],
    buckets=COSINE_BUCKETS,
)
SHADOW_DROPPED = Counter(
    "ecom_shadow_dropped",
    "Rows not compared with the shadow, by reason (queue_full, timeout, error); the primary never waits",
    ["kind", "reason"],
)
SHADOW_LATENCY = Histogram(
    "ecom_shadow_latency_seconds", "Duration of one shadow request", ["kind"], buckets=INFERENCE_BUCKETS
)
SHADOW_AGREEMENT_FLOOR = Gauge(
    "ecom_shadow_agreement_floor", "ECOM_SHADOW_AGREEMENT_FLOOR: the agreement the shadow alert expects"
)
LIVE_SENTIMENT = Counter(
    "ecom_live_sentiment",
    "Rated reviews by the version that answered, its predicted sentiment and the rating's own "
    "(1-2 negative, 3 neutral, 4-5 positive)",
    ["version", "predicted", "actual"],
)
LIVE_MACRO_F1 = Gauge(
    "ecom_live_macro_f1",
    "Macro-F1 of a version's sentiment against the ratings over its last ECOM_LIVE_F1_WINDOW rated "
    "reviews in this worker (absent until it has that many)",
    ["version"],
)
LIVE_F1_FLOOR = Gauge(
    "ecom_live_macro_f1_floor", "ECOM_LIVE_F1_FLOOR: the live macro-F1 the primary version is held to"
)


def initialise(
    inputs: Iterable[str], outputs: Iterable[str], dlqs: Iterable[str], model_kinds: Iterable[str]
) -> None:
    """Create every bounded label combination at 0 at start-up.

    A labelled series only appears once it is first touched, so without this a dashboard shows "no
    data" instead of 0 and `rate()` misses the first increment. Dead-letter reasons are left out: they
    are error class names, known only when one happens.
    """
    for topic in inputs:
        EVENTS_CONSUMED.labels(topic)
        END_TO_END_LATENCY.labels(topic)
        for outcome in ("enriched", "dead_lettered"):
            EVENTS_PROCESSED.labels(topic, outcome)
        for stage in STAGES:
            STAGE_LATENCY.labels(topic, stage)
    for topic in (*outputs, *dlqs):
        EVENTS_PRODUCED.labels(topic)
    for kind in model_kinds:
        INFERENCE_BATCH_SIZE.labels(kind)
        INFERENCE_LATENCY.labels(kind)
        for outcome in ("ok", "error", "retry"):
            INFERENCE_REQUESTS.labels(kind, outcome)
        SHADOW_COSINE.labels(kind)
        SHADOW_LATENCY.labels(kind)
        for reason in SHADOW_DROP_REASONS:
            SHADOW_DROPPED.labels(kind, reason)
        for aspect in SHADOW_ASPECTS:
            for shadow_outcome in SHADOW_OUTCOMES:
                SHADOW_AGREEMENT.labels(kind, aspect, shadow_outcome)
