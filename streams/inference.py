"""Micro-batched inference with retries and bisection, in front of any `ModelClient`.

`InferenceService` puts one `MicroBatcher` per kind of input (review, product) in front of the model; a
batch that fails for a transient reason is retried (`streams.lifecycle.Retry`) until it succeeds (the
callers wait, so the agents stop taking events: consumption slows down instead of dropping anything). A
batch that the model rejects is split in halves until the rejected rows stand alone; those are returned
as errors to their own callers and every other row still gets its result.

Whose fault a failure is decides between the two:

- the model names a bad input (INVALID_ARGUMENT, or a `fusion.errors` class in the message): the rows';
  bisect, and dead-letter the rows that fail alone;
- the server says it cannot answer (unreachable, overloaded, a dead Python stub): the server's; retry;
- any other server error (gRPC INTERNAL/UNKNOWN, "ambiguous") may be either. A known-good row of the same
  kind (`known_good_row`) is sent at once: if the server answers it, it works and the failure is the
  rows' (bisect; a row that fails alone is tried `ECOM_RETRY_MAX_AMBIGUOUS` times, then dead-lettered);
  if it fails too, the failure is the server's (`ModelServerFault`): the batch is retried with backoff
  like unavailability, and no row is dead-lettered for it, however long it lasts.

Versions (`streams.rollout`): a row names the version it goes to ("" is the primary); rows of different
versions never share a request (one micro-batcher per kind and version). A canary version that Triton
stops serving hands its waiting batches to the primary (`Rollout.effective`). Every batch the primary
answered is offered to the shadow version, if one is set, without waiting for it.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from streams import metrics
from streams.batcher import MicroBatcher
from streams.contract import ModelInfo, ModelInput, ModelOutput
from streams.errors import EnrichmentError, ModelRejected, ModelServerFault
from streams.lifecycle import Retry
from streams.protocols import ModelClient
from streams.rollout import Rollout, ShadowRunner, version_label

log = logging.getLogger(__name__)

KNOWN_GOOD_TEXT = b"Soft cotton, fits well."


@functools.cache
def known_good_row(kind: str) -> ModelInput:
    """A small row the model answers whenever it works: text, plus a plain 32x32 PNG for products (so
    that the image path is exercised too)."""
    if kind != "product":
        return ModelInput(text=KNOWN_GOOD_TEXT, image=b"")
    from PIL import Image  # the model's own image checks (streams.validation) use it too

    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, format="PNG")
    return ModelInput(text=KNOWN_GOOD_TEXT, image=buffer.getvalue())


class InferenceService:
    """Micro-batched, retried, bisected inference for the agents."""

    def __init__(
        self,
        model: ModelClient,
        *,
        kinds: Iterable[str],
        max_batch: int,
        linger: float,
        max_in_flight: int,
        retry: Retry,
        rollout: Rollout | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.model = model
        self.retry = retry
        self.rollout = rollout or Rollout()
        self.shadow = shadow
        self.kinds = tuple(kinds)
        self._max_batch, self._linger, self._max_in_flight = max_batch, linger, max_in_flight
        self._batchers: dict[tuple[str, str], MicroBatcher[ModelInput, ModelOutput]] = {}
        for kind in self.kinds:
            self._batcher(kind, "")

    def _batcher(self, kind: str, version: str) -> MicroBatcher[ModelInput, ModelOutput]:
        batcher = self._batchers.get((kind, version))
        if batcher is None:
            if kind not in self.kinds:
                raise KeyError(kind)
            name = f"{kind}@{version}" if version else kind
            batcher = MicroBatcher(
                self._handler(kind, version),
                max_size=self._max_batch,
                linger=self._linger,
                max_in_flight=self._max_in_flight,
                name=name,
            )
            self._batchers[(kind, version)] = batcher
        return batcher

    async def info(self, version: str = "") -> ModelInfo:
        """What a version declares (default: the primary): name, labels; waits while Triton is away."""
        if not version:
            return await self.retry.call(self.model.info, what="model info")
        what = f"model info of version {version}"
        return await self.retry.call(lambda: self.model.info(version), what=what)

    async def infer(self, kind: str, row: ModelInput, version: str = "") -> ModelOutput:
        """This row's output from `version` ("": the primary); raises the row's own non-retriable error
        (e.g. `ModelRejected`). The output carries the version that answered."""
        return await self._batcher(kind, version).submit(row)

    async def answers_known_good(self, kind: str, version: str = "") -> bool:
        """Whether the model answers a known-good row of this kind now (one request, no retry)."""
        try:
            await self._send([known_good_row(kind)], version)
        except EnrichmentError as exc:
            log.warning("the model fails a known-good %s row too (%s: %s)", kind, exc.reason, exc)
            return False
        return True

    async def _send(self, rows: list[ModelInput], version: str) -> list[ModelOutput]:
        return await (self.model.infer(rows, version=version) if version else self.model.infer(rows))

    def _handler(self, kind: str, version: str) -> Callable[[Sequence[ModelInput]], Any]:
        async def handle(rows: Sequence[ModelInput]) -> list[ModelOutput | BaseException]:
            return await self._infer_rows(kind, list(rows), version)

        return handle

    async def _infer_rows(
        self, kind: str, rows: list[ModelInput], version: str = ""
    ) -> list[ModelOutput | BaseException]:
        try:
            return list(await self._call_with_retry(kind, rows, version))
        except ModelRejected as exc:
            if len(rows) == 1:
                return [exc]
            # One row's error fails its whole request: split until the culprits stand alone.
            mid = len(rows) // 2
            log.info("%s batch of %d rejected (%s); bisecting", kind, len(rows), exc)
            return [
                *await self._infer_rows(kind, rows[:mid], version),
                *await self._infer_rows(kind, rows[mid:], version),
            ]

    async def _call_with_retry(
        self, kind: str, rows: list[ModelInput], version: str = ""
    ) -> list[ModelOutput]:
        ambiguous = 0

        async def attempt() -> list[ModelOutput]:
            wanted = self.rollout.effective(version)  # a canary gone meanwhile: the primary answers
            try:
                return await self._request(kind, rows, wanted)
            except ModelRejected as exc:
                if exc.ambiguous and not await self.answers_known_good(kind, wanted):
                    raise ModelServerFault(
                        f"{exc} (a known-good {kind} row fails as well: the server's fault, not the rows')"
                    ) from None
                raise

        def should_retry(exc: BaseException, _: int) -> bool:
            nonlocal ambiguous
            retry = isinstance(exc, EnrichmentError) and exc.retriable
            if isinstance(exc, ModelRejected) and exc.ambiguous and len(rows) == 1:
                # A single row that keeps failing with a server error, while the server answers a
                # known-good row, is given a few chances (a model instance may have crashed under it).
                ambiguous += 1
                retry = ambiguous < self.retry.policy.max_ambiguous
            metrics.INFERENCE_REQUESTS.labels(kind, "retry" if retry else "error").inc()
            return retry

        return await self.retry.call(
            attempt, what=f"{kind} inference of {len(rows)} rows", should_retry=should_retry
        )

    async def _request(self, kind: str, rows: list[ModelInput], version: str = "") -> list[ModelOutput]:
        metrics.INFERENCE_IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            outputs = await self._send(rows, version)
        finally:
            metrics.INFERENCE_IN_FLIGHT.dec()
            metrics.INFERENCE_LATENCY.labels(kind).observe(time.perf_counter() - started)
        metrics.INFERENCE_BATCH_SIZE.labels(kind).observe(len(rows))
        metrics.INFERENCE_REQUESTS.labels(kind, "ok").inc()
        if outputs:
            role = "canary" if version else "primary"
            metrics.MODEL_ROWS.labels(kind, version_label(outputs[0]), role).inc(len(outputs))
            if self.shadow is not None and not version:
                self.shadow.offer(kind, rows, outputs)  # never awaited: the shadow's own side path
        return outputs

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        if self.shadow is not None:
            await self.shadow.close()
