"""Inference on Triton: the gRPC client, micro-batching, retries with backoff, and bisection.

`TritonModel` speaks to `ecom_fusion` through `tritonclient.grpc.aio` and turns every failure into the
service's exception hierarchy. `InferenceService` puts one `MicroBatcher` per kind (review, product) in
front of it; a batch that fails for a transient reason is retried with capped exponential backoff until it
succeeds (the callers wait, so the agents stop taking events: consumption slows down instead of dropping
anything). A batch that the model rejects is split in halves until the rejected rows stand alone; those
are returned as errors to their own callers and every other row still gets its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fusion.errors import BadInput
from streams import metrics
from streams.batcher import MicroBatcher
from streams.errors import (
    BadModelResponse,
    EnrichmentError,
    InferenceTimeout,
    InferenceUnavailable,
    ModelRejected,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["review", "product"]
Vector = npt.NDArray[np.float32]
SENTIMENT_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    category_labels: tuple[str, ...]
    embedding_dim: int


@dataclass(frozen=True)
class ModelInput:
    """One row of an `ecom_fusion` request: UTF-8 text and encoded image bytes, either may be empty."""

    text: bytes
    image: bytes


@dataclass(frozen=True)
class ModelOutput:
    sentiment: Vector
    category: Vector
    embedding: Vector


class ModelClient(Protocol):
    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]: ...

    async def info(self) -> ModelInfo: ...


# gRPC status codes (as tritonclient reports them) that say "try again later".
_TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.ABORTED"}
# Neither clearly transient nor clearly the request's fault (a Python-backend error is INTERNAL).
_AMBIGUOUS = {"StatusCode.INTERNAL", "StatusCode.UNKNOWN"}


def _subclass_names(cls: type[Exception]) -> set[str]:
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _subclass_names(sub)
    return names


_BAD_INPUT_PREFIXES = tuple(f"{name}:" for name in sorted(_subclass_names(BadInput)))


def classify_triton_error(status: str | None, message: str) -> EnrichmentError:
    """Map a tritonclient error (gRPC status + message) onto the exception hierarchy."""
    text = message or "(no message)"
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return InferenceTimeout(text)
    if status in _TRANSIENT or status == "StatusCode.CANCELLED":
        return InferenceUnavailable(f"{status}: {text}")
    lowered = text.lower()
    if status == "StatusCode.NOT_FOUND" or "not ready" in lowered or "unknown model" in lowered:
        return InferenceUnavailable(f"{status}: {text}")  # the model is (re)loading
    if status in _AMBIGUOUS:
        # The model names the request's own fault by its fusion.errors class ("InvalidImage: ...").
        return ModelRejected(f"{status}: {text}", ambiguous=not text.startswith(_BAD_INPUT_PREFIXES))
    return ModelRejected(f"{status}: {text}")


# tritonclient's own defaults (unbounded message sizes, keepalive), plus a short reconnect backoff: gRPC's
# default grows to 2 minutes, which would keep the service waiting that long after Triton is back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class TritonModel:
    """The `ecom_fusion` model behind Triton's asyncio gRPC client."""

    def __init__(self, url: str, model: str, *, timeout: float, ssl: bool = False) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.ssl = ssl
        self._client: Any = None
        self._info: ModelInfo | None = None

    def _grpc(self) -> Any:
        # Created lazily: the gRPC aio channel binds to the running event loop.
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, ssl=self.ssl, channel_args=CHANNEL_ARGS)
        return self._client

    async def _call(self, what: str, coro_fn: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await asyncio.wait_for(coro_fn(), self.timeout + 5)
        except InferenceServerException as exc:
            raise classify_triton_error(exc.status(), str(exc.message())) from None
        except TimeoutError:
            raise InferenceTimeout(f"{what} took longer than {self.timeout + 5:.0f}s") from None
        except (OSError, ConnectionError) as exc:
            raise InferenceUnavailable(f"{what}: {exc}") from None

    async def ready(self) -> bool:
        client = self._grpc()
        try:
            live = await self._call("is_server_ready", lambda: client.is_server_ready(client_timeout=2))
            return bool(live) and bool(
                await self._call(
                    "is_model_ready", lambda: client.is_model_ready(self.model, client_timeout=2)
                )
            )
        except EnrichmentError:
            return False

    async def info(self, refresh: bool = False) -> ModelInfo:
        if self._info is not None and not refresh:
            return self._info
        client = self._grpc()
        config = await self._call(
            "get_model_config",
            lambda: client.get_model_config(self.model, as_json=True, client_timeout=self.timeout),
        )
        self._info = parse_model_config(self.model, config)
        return self._info

    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        import tritonclient.grpc.aio as grpcclient

        client = self._grpc()
        n = len(rows)
        text = np.array([[row.text] for row in rows], dtype=np.object_)
        image = np.array([[row.image] for row in rows], dtype=np.object_)
        inputs = [
            grpcclient.InferInput("TEXT", [n, 1], "BYTES"),
            grpcclient.InferInput("IMAGE", [n, 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(text)
        inputs[1].set_data_from_numpy(image)
        outputs = [grpcclient.InferRequestedOutput(name) for name in ("SENTIMENT", "CATEGORY", "EMBEDDING")]
        result = await self._call(
            "infer",
            lambda: client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout),
        )
        return split_outputs(
            n,
            result.as_numpy("SENTIMENT"),
            result.as_numpy("CATEGORY"),
            result.as_numpy("EMBEDDING"),
        )

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


def parse_model_config(model: str, config: dict[str, Any]) -> ModelInfo:
    """Version, labels and embedding size from `config.pbtxt` `parameters` (docs/architecture.md)."""
    cfg = config.get("config", config)
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    try:
        labels = tuple(str(x) for x in json.loads(params["category_labels"]))
        dim = int(params["embedding_dim"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BadModelResponse(
            f"model config of {model} lacks category_labels/embedding_dim: {exc}"
        ) from None
    version = params.get("model_version_name") or "unknown"
    return ModelInfo(name=model, version=version, category_labels=labels, embedding_dim=dim)


def split_outputs(n: int, sentiment: Any, category: Any, embedding: Any) -> list[ModelOutput]:
    """One `ModelOutput` per row, after checking the shapes the contract promises."""
    arrays = {"SENTIMENT": sentiment, "CATEGORY": category, "EMBEDDING": embedding}
    for name, arr in arrays.items():
        if arr is None:
            raise BadModelResponse(f"response lacks output {name}")
        if arr.ndim != 2 or arr.shape[0] != n:
            raise BadModelResponse(f"output {name} has shape {arr.shape}, expected ({n}, k)")
    if sentiment.shape[1] != len(SENTIMENT_LABELS):
        raise BadModelResponse(f"SENTIMENT has {sentiment.shape[1]} columns, expected 3")
    s, c, e = (np.asarray(a, dtype=np.float32) for a in (sentiment, category, embedding))
    return [ModelOutput(sentiment=s[i], category=c[i], embedding=e[i]) for i in range(n)]


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.2
    maximum: float = 10.0
    max_ambiguous: int = 3

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter (attempt 0 is the first retry)."""
        ceiling = min(self.maximum, self.initial * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311  (jitter, not cryptography)


class InferenceService:
    """Micro-batched, retried, bisected inference for the agents."""

    def __init__(
        self,
        model: ModelClient,
        *,
        max_batch: int,
        linger: float,
        max_in_flight: int,
        retry: RetryPolicy,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.model = model
        self.retry = retry
        self._sleep = sleep
        self._batchers: dict[Kind, MicroBatcher[ModelInput, ModelOutput]] = {
            kind: MicroBatcher(
                self._handler(kind), max_size=max_batch, linger=linger, max_in_flight=max_in_flight, name=kind
            )
            for kind in ("review", "product")
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, model: ModelClient, sleep: Callable[[float], Any] = asyncio.sleep
    ) -> InferenceService:
        return cls(
            model,
            max_batch=settings.batch_max_size,
            linger=settings.batch_linger_ms / 1000,
            max_in_flight=settings.max_in_flight,
            retry=RetryPolicy(
                settings.retry_backoff_initial_s, settings.retry_backoff_max_s, settings.retry_max_ambiguous
            ),
            sleep=sleep,
        )

    async def info(self) -> ModelInfo:
        """The served model's name, version and labels; waits (with backoff) while Triton is away."""
        attempt = 0
        while True:
            try:
                return await self.model.info()
            except EnrichmentError as exc:
                if not exc.retriable:
                    raise
                delay = self.retry.backoff(attempt)
                log.warning("model info unavailable (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                attempt += 1

    async def infer(self, kind: Kind, row: ModelInput) -> ModelOutput:
        """This row's output; raises the row's own non-retriable error (e.g. `ModelRejected`)."""
        return await self._batchers[kind].submit(row)

    def _handler(self, kind: Kind) -> Callable[[Sequence[ModelInput]], Any]:
        async def handle(rows: Sequence[ModelInput]) -> list[ModelOutput | BaseException]:
            return await self._infer_rows(kind, list(rows))

        return handle

    async def _infer_rows(self, kind: Kind, rows: list[ModelInput]) -> list[ModelOutput | BaseException]:
        try:
            return list(await self._call_with_retry(kind, rows))
        except ModelRejected as exc:
            if len(rows) == 1:
                return [exc]
            # One row's error fails its whole request: split until the culprits stand alone.
            mid = len(rows) // 2
            log.info("%s batch of %d rejected (%s); bisecting", kind, len(rows), exc)
            return [*await self._infer_rows(kind, rows[:mid]), *await self._infer_rows(kind, rows[mid:])]

    async def _call_with_retry(self, kind: Kind, rows: list[ModelInput]) -> list[ModelOutput]:
        attempt = 0
        ambiguous = 0
        while True:
            metrics.INFERENCE_IN_FLIGHT.inc()
            started = time.perf_counter()
            try:
                outputs = await self.model.infer(rows)
            except EnrichmentError as exc:
                metrics.INFERENCE_LATENCY.labels(kind).observe(time.perf_counter() - started)
                retry = exc.retriable
                if isinstance(exc, ModelRejected) and exc.ambiguous and len(rows) == 1:
                    # A single row that keeps failing with a server error is given a few chances.
                    ambiguous += 1
                    retry = ambiguous < self.retry.max_ambiguous
                if not retry:
                    metrics.INFERENCE_REQUESTS.labels(kind, "error").inc()
                    raise
                metrics.INFERENCE_REQUESTS.labels(kind, "retry").inc()
                delay = self.retry.backoff(attempt)
                log.warning(
                    "%s inference of %d rows failed (%s: %s); retry %d in %.2fs",
                    kind,
                    len(rows),
                    exc.reason,
                    exc,
                    attempt + 1,
                    delay,
                )
                await self._sleep(delay)
                attempt += 1
                continue
            finally:
                metrics.INFERENCE_IN_FLIGHT.dec()
            metrics.INFERENCE_LATENCY.labels(kind).observe(time.perf_counter() - started)
            metrics.INFERENCE_BATCH_SIZE.labels(kind).observe(len(rows))
            metrics.INFERENCE_REQUESTS.labels(kind, "ok").inc()
            return outputs

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
