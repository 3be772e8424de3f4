"""Model versions while the stream runs: canary routing, the shadow side path, live quality.

Three mechanisms, each off unless its setting names a version (docs/rollout.md):

1. **Canary** (`Rollout.route`): `ECOM_CANARY_FRACTION` of the entities go to `ECOM_CANARY_VERSION`,
   chosen by a stable hash of the entity key (a product's id): one product always sees one version
   while the settings hold, and raising the fraction only adds entities (a key's bucket never moves).
   While Triton does not have the canary version ready, its entities go to the primary
   (`canary_ready`, kept by the runtime's probe).
2. **Shadow** (`ShadowRunner`): every batch the primary answered is offered to `ECOM_SHADOW_VERSION`
   on a side path: a bounded queue and one request at a time, never awaited by the primary path. A
   full queue, a timeout or an error drops the batch with a counter (`ecom_shadow_dropped_total`);
   what is answered is compared row by row with the primary's answer (sentiment label, category
   top-1, embedding cosine: `ecom_shadow_agreement_*`). Only the primary's result is ever published.
3. **Live quality** (`LiveQuality`): a review's stars are its own label (1-2 negative, 3 neutral,
   4-5 positive). Per version that answered, primary, canary or shadow: counters of predicted against
   rated sentiment, and the macro-F1 over the last `ECOM_LIVE_F1_WINDOW` rated reviews.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streams import metrics
from streams.contract import ModelInfo, ModelInput, ModelOutput, Vector
from streams.protocols import ModelClient

log = logging.getLogger(__name__)

SENTIMENTS = ("negative", "neutral", "positive")
# What each kind publishes, so what its shadow is compared on (a review's category is never published).
KIND_ASPECTS: dict[str, tuple[str, ...]] = {
    "review": ("sentiment",),
    "product": ("category", "embedding"),
}


def key_bucket(key: str) -> float:
    """A stable number in [0, 1) for an entity key: the same on every worker, process and restart."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"ecom-canary").digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class Rollout:
    """Which version an entity's rows go to: the primary ("": the model client's default) or the canary."""

    canary_version: str = ""
    canary_fraction: float = 0.0
    canary_ready: bool = True  # updated by the runtime's probe; optimistic until the first one

    def route(self, key: str) -> str:
        """The version to request for this entity: the canary's for its share of keys, else ""."""
        if not self.canary_version or self.canary_fraction <= 0 or not self.canary_ready:
            return ""
        return self.canary_version if key_bucket(key) < self.canary_fraction else ""

    def effective(self, version: str) -> str:
        """The version a (re)try of a request for `version` goes to: the primary once the canary is
        found not ready (unloaded while its entities were waiting), so that nothing waits on it."""
        if version and version == self.canary_version and not self.canary_ready:
            return ""
        return version


def version_label(output: ModelOutput, info: ModelInfo | None = None) -> str:
    """The `version` label of the per-version metrics: Triton's version number that answered."""
    return output.version or (info.triton_version or info.version if info is not None else "") or "unknown"


def predicted_label(probabilities: Vector, labels: Sequence[str]) -> str:
    return str(labels[int(np.argmax(probabilities))]) if len(labels) == len(probabilities) else ""


def macro_f1(pairs: Sequence[tuple[str, str]]) -> float:
    """Macro-F1 of (predicted, actual) pairs over the labels that occur in either."""
    labels = {p for p, _ in pairs} | {a for _, a in pairs}
    scores = []
    for label in sorted(labels):
        tp = sum(1 for p, a in pairs if p == label and a == label)
        fp = sum(1 for p, a in pairs if p == label and a != label)
        fn = sum(1 for p, a in pairs if p != label and a == label)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


@dataclass
class LiveQuality:
    """Predicted sentiment against the ratings, per version that answered (this worker's view)."""

    window: int = 500
    _recent: dict[str, deque[tuple[str, str]]] = field(default_factory=dict)

    def observe(self, version: str, predicted: str, actual: str) -> None:
        metrics.LIVE_SENTIMENT.labels(version, predicted, actual).inc()
        recent = self._recent.get(version)
        if recent is None:
            recent = self._recent[version] = deque(maxlen=self.window)
        recent.append((predicted, actual))
        if len(recent) == self.window:
            metrics.LIVE_MACRO_F1.labels(version).set(macro_f1(recent))

    def f1(self, version: str) -> float | None:
        """The version's macro-F1 over its window, once the window is full."""
        recent = self._recent.get(version)
        return macro_f1(recent) if recent is not None and len(recent) == self.window else None


def cosine(a: Vector, b: Vector) -> float | None:
    if a.shape != b.shape:
        return None
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else None


@dataclass(frozen=True)
class _Offer:
    kind: str
    rows: tuple[ModelInput, ...]
    primary: tuple[ModelOutput, ...]


class ShadowRunner:
    """The shadow version's side path. `offer` never blocks and never raises: the primary calls it
    after publishing-relevant work is done, and a batch that cannot be taken is dropped and counted."""

    def __init__(
        self,
        model: ModelClient,
        version: str,
        *,
        quality: LiveQuality,
        queue_batches: int = 16,
        timeout_s: float = 10.0,
        embedding_agreement: float = 0.99,
    ) -> None:
        self.model = model
        self.version = version
        self.quality = quality
        self.timeout_s = timeout_s
        self.embedding_agreement = embedding_agreement
        self._queue: asyncio.Queue[_Offer] = asyncio.Queue(maxsize=queue_batches)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def offer(self, kind: str, rows: Sequence[ModelInput], primary: Sequence[ModelOutput]) -> None:
        if self._closed or not rows:
            return
        try:
            self._queue.put_nowait(_Offer(kind, tuple(rows), tuple(primary)))
        except asyncio.QueueFull:
            metrics.SHADOW_DROPPED.labels(kind, "queue_full").inc(len(rows))
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shadow")

    async def _run(self) -> None:
        while not self._closed:
            offer = await self._queue.get()
            try:
                await self._shadow(offer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (the side path must never end: count and go on)
                metrics.SHADOW_DROPPED.labels(offer.kind, "error").inc(len(offer.rows))
                log.debug("shadow comparison failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    async def _shadow(self, offer: _Offer) -> None:
        started = time.perf_counter()
        try:
            answers = await asyncio.wait_for(
                self.model.infer(list(offer.rows), version=self.version), self.timeout_s
            )
        except TimeoutError:
            metrics.SHADOW_DROPPED.labels(offer.kind, "timeout").inc(len(offer.rows))
            return
        except Exception as exc:  # noqa: BLE001  (any failure of the shadow is its own)
            metrics.SHADOW_DROPPED.labels(offer.kind, "error").inc(len(offer.rows))
            log.debug("shadow version %s failed a batch: %s: %s", self.version, type(exc).__name__, exc)
            return
        metrics.SHADOW_LATENCY.labels(offer.kind).observe(time.perf_counter() - started)
        if len(answers) != len(offer.rows):
            metrics.SHADOW_DROPPED.labels(offer.kind, "error").inc(len(offer.rows))
            return
        await self.compare(offer.kind, offer.rows, offer.primary, answers)

    async def compare(
        self,
        kind: str,
        rows: Sequence[ModelInput],
        primary: Sequence[ModelOutput],
        shadow: Sequence[ModelOutput],
    ) -> None:
        """Count agreement row by row; labels are compared by name (versions may order them apart)."""
        shadow_info = await self._info(shadow[0].version if shadow else "")
        primary_infos: dict[str, ModelInfo] = {}
        aspects = KIND_ASPECTS.get(kind, metrics.SHADOW_ASPECTS)
        for row, mine, theirs in zip(rows, primary, shadow, strict=True):
            if mine.version not in primary_infos:
                primary_infos[mine.version] = await self._info(mine.version)
            info = primary_infos[mine.version]
            metrics.MODEL_ROWS.labels(kind, version_label(theirs, shadow_info), "shadow").inc()
            theirs_sentiment = predicted_label(theirs.sentiment, shadow_info.sentiment_labels)
            for aspect in aspects:
                if aspect == "sentiment":
                    a = predicted_label(mine.sentiment, info.sentiment_labels)
                    outcome = _agreement(a, theirs_sentiment)
                elif aspect == "category":
                    a = predicted_label(mine.category, info.category_labels)
                    outcome = _agreement(a, predicted_label(theirs.category, shadow_info.category_labels))
                else:
                    similarity = cosine(mine.embedding, theirs.embedding)
                    if similarity is None:
                        outcome = "incomparable"
                    else:
                        metrics.SHADOW_COSINE.labels(kind).observe(similarity)
                        outcome = "agree" if similarity >= self.embedding_agreement else "disagree"
                metrics.SHADOW_AGREEMENT.labels(kind, aspect, outcome).inc()
            if row.reference_sentiment is not None and theirs_sentiment:
                self.quality.observe(
                    version_label(theirs, shadow_info), theirs_sentiment, row.reference_sentiment
                )

    async def _info(self, version: str) -> ModelInfo:
        return await (self.model.info(version) if version else self.model.info())

    async def drain(self) -> None:
        """Wait until every batch offered so far is compared or dropped (tests, the benchmark)."""
        if self._task is not None and not self._task.done():
            await self._queue.join()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _agreement(a: str, b: str) -> str:
    if not a or not b:
        return "incomparable"
    return "agree" if a == b else "disagree"
