"""Triton's asyncio gRPC client for `ecom_fusion`, every failure turned into the service's errors.

Retriable or not is decided here, once, from the gRPC status code: unavailable, overloaded, timed out
or a model that is (re)loading is retriable; so is a Python backend whose stub process is dead (Triton
stays up and answers every request with INTERNAL). An error the model raises for one request names the
request's own fault by its `fusion.errors` class and is not retriable. Any other INTERNAL/UNKNOWN error
is ambiguous: whether it is the request's fault or the server's is decided by `streams.inference`.

Versions: a request names a version (`version=`, else the client's default, else Triton's latest), and
every output carries the version that answered, read from the response. What a version declares (name,
labels, embedding size) is read from the model's config the first time that version answers, so a
version loaded while the worker runs is described correctly without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusion.errors import BadInput
from streams.contract import (
    ModelInfo,
    ModelInput,
    ModelOutput,
    declared_versions,
    parse_model_config,
    split_outputs,
)
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
    """The `ecom_fusion` model behind Triton's asyncio gRPC client.

    `version`: the version a request names when the caller names none (`ECOM_MODEL_VERSION`); empty:
    Triton's latest loaded version. Readiness and the health probe's known-good rows use it too."""

    REREAD_S = 5.0  # a config read this recently describes any version without reading it again

    def __init__(self, url: str, model: str, *, timeout: float, ssl: bool = False, version: str = "") -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.ssl = ssl
        self.version = version
        self._client: Any = None
        self._config: dict[str, Any] | None = None
        self._read_at = 0.0  # when the config was read (time.monotonic)
        self._latest = ""  # the highest version Triton had ready at the last refresh
        self._infos: dict[str, ModelInfo] = {}
        self._refreshing: asyncio.Lock | None = None

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

    async def ready(self, version: str = "") -> bool:
        """This version (default: the client's, else any version) is ready to answer. Not Triton's
        server readiness: that is false while any model version loads, though the versions already
        loaded go on answering (a load of a new version takes a minute on a CPU)."""
        client = self._grpc()
        wanted = version or self.version
        try:
            if not wanted:
                metadata = await self._call(
                    "get_model_metadata",
                    lambda: client.get_model_metadata(self.model, as_json=True, client_timeout=2),
                )
                return bool(metadata.get("versions"))
            return bool(
                await self._call(
                    "is_model_ready",
                    lambda: client.is_model_ready(self.model, wanted, client_timeout=2),
                )
            )
        except EnrichmentError:
            return False

    async def info(self, version: str = "", refresh: bool = False) -> ModelInfo:
        """What `version` declares (default: the client's version, else Triton's latest). A version the
        config read last does not speak of makes the client read it again first: it may have been
        loaded since (at most once per `REREAD_S` for versions no config names)."""
        wanted = version or self.version
        cached = self._infos.get(wanted)
        if cached is not None and not refresh:
            return cached
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            cached = self._infos.get(wanted)
            if cached is None or refresh:
                if refresh or not self._describes(wanted):
                    await self._refresh()
                cached = parse_model_config(self.model, self._config or {}, wanted or self._latest)
                self._infos[wanted] = cached
            return cached

    def _describes(self, version: str) -> bool:
        if self._config is None:
            return False
        recent = time.monotonic() - self._read_at < self.REREAD_S
        return recent or (bool(version) and version in declared_versions(self._config))

    async def _refresh(self) -> None:
        client = self._grpc()
        config = await self._call(
            "get_model_config",
            lambda: client.get_model_config(self.model, as_json=True, client_timeout=self.timeout),
        )
        latest = ""
        if not self.version:
            metadata = await self._call(
                "get_model_metadata",
                lambda: client.get_model_metadata(self.model, as_json=True, client_timeout=self.timeout),
            )
            ready = [int(v) for v in metadata.get("versions", []) if str(v).isdigit()]
            latest = str(max(ready)) if ready else ""
        self._config, self._latest, self._infos = config, latest, {}
        self._read_at = time.monotonic()

    async def infer(self, rows: Sequence[ModelInput], version: str = "") -> list[ModelOutput]:
        """One request for these rows to `version` (default: the client's, else Triton's latest); each
        output carries the version that answered."""
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
        wanted = version or self.version
        result = await self._call(
            "infer",
            lambda: client.infer(
                self.model, inputs, model_version=wanted, outputs=outputs, client_timeout=self.timeout
            ),
        )
        return split_outputs(
            n,
            result.as_numpy("SENTIMENT"),
            result.as_numpy("CATEGORY"),
            result.as_numpy("EMBEDDING"),
            version=str(result.get_response().model_version or wanted),
        )

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
