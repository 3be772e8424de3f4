"""Triton's asyncio gRPC client for `ecom_fusion`, every failure turned into the service's errors.

Retriable or not is decided here, once, from the gRPC status code: unavailable, overloaded, timed out
or a model that is (re)loading is retriable; so is a Python backend whose stub process is dead (Triton
stays up and answers every request with INTERNAL). An error the model raises for one request names the
request's own fault by its `fusion.errors` class and is not retriable. Any other INTERNAL/UNKNOWN error
is ambiguous: whether it is the request's fault or the server's is decided by `streams.inference`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusion.errors import BadInput
from streams.contract import ModelInfo, ModelInput, ModelOutput, parse_model_config, split_outputs
from streams.errors import (
    EnrichmentError,
    InferenceTimeout,
    InferenceUnavailable,
    ModelRejected,
    ModelServerFault,
)

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
    if status in _AMBIGUOUS and "stub process" in lowered and "not healthy" in lowered:
        # Triton's own words for a Python backend whose stub died: no request can be answered.
        return ModelServerFault(f"{status}: {text}")
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
