"""The served model's request handling, free of Triton so that tests and the benchmark can call it.

`triton_models/ecom_fusion/1/model.py` only converts Triton tensors to `Row`s and `Outcome`s back into
responses. One request (which may carry several rows) gets either all its outputs or one error; a bad
request never fails the others in the same batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fusion.errors import BadInput, FusionError
from fusion.fast import make_predictor
from fusion.network import Predictor, load_tuned
from fusion.preprocess import GreyImage, ImageTensor, InputLimits, prepare_image, validate_request

log = logging.getLogger(__name__)

Row = tuple[bytes, bytes]  # (TEXT, IMAGE) of one row; either may be empty
Outputs = dict[str, npt.NDArray[np.float32]]  # SENTIMENT [n, 3], CATEGORY [n, C], EMBEDDING [n, D]


@dataclass
class Outcome:
    outputs: Outputs | None = None
    error: FusionError | None = None


def config_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """`parameters` of a Triton model config (as JSON) -> plain {key: string}."""
    params = model_config.get("parameters", {}) or {}
    return {key: str(value.get("string_value", "")) for key, value in params.items()}


def limits_from_parameters(params: Mapping[str, str]) -> InputLimits:
    default = InputLimits()
    return InputLimits(
        max_text_bytes=int(params.get("max_text_bytes", default.max_text_bytes)),
        max_image_bytes=int(params.get("max_image_bytes", default.max_image_bytes)),
        max_image_pixels=int(params.get("max_image_pixels", default.max_image_pixels)),
        formats=tuple(json.loads(params["image_formats"])) if "image_formats" in params else default.formats,
    )


def as_bytes(value: object) -> bytes:
    """A TYPE_STRING element as numpy hands it over: bytes (or str from some clients)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    raise BadInput(f"unsupported element type {type(value).__name__}")


class FusionService:
    def __init__(
        self,
        version_dir: Path,
        device: str = "cpu",
        limits: InputLimits | None = None,
        runtime: str = "torch",
        threads: int = 1,
    ) -> None:
        """`runtime` (fusion.fast.RUNTIMES) applies on the CPU; when its library is not installed the
        service logs a warning and runs torch (`self.runtime` says which one runs)."""
        tokenizer, net = load_tuned(version_dir, device)
        self.predictor: Predictor
        try:
            self.predictor = make_predictor(tokenizer, net, device, runtime, version_dir, threads)
        except ImportError as exc:
            log.warning("runtime %s unavailable (%s): serving with torch", runtime, exc)
            self.predictor = Predictor(tokenizer, net, device)
        self.runtime = getattr(self.predictor, "runtime", "torch")
        self.limits = limits or InputLimits()
        self.image_size = net.config.image_size
        self.num_categories = net.config.num_leaves
        self.embedding_dim = net.config.embedding_dim

    def _prepare(self, rows: Sequence[Row]) -> list[tuple[str | None, ImageTensor | None]]:
        prepared: list[tuple[str | None, ImageTensor | None]] = []
        for i, (text_raw, image_raw) in enumerate(rows):
            try:
                text, grey = validate_request(text_raw, image_raw, self.limits)
            except BadInput as exc:
                if len(rows) > 1:
                    raise type(exc)(f"row {i}: {exc}") from exc
                raise
            prepared.append((text, self._image(grey)))
        return prepared

    def _image(self, grey: GreyImage | None) -> ImageTensor | None:
        return None if grey is None else prepare_image(grey, self.image_size)

    def run(self, requests: Sequence[Sequence[Row]]) -> list[Outcome]:
        """One outcome per request, in order."""
        outcomes = [Outcome() for _ in requests]
        texts: list[str | None] = []
        images: list[ImageTensor | None] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for r, rows in enumerate(requests):
            try:
                if not rows:
                    raise BadInput("request has no rows")
                prepared = self._prepare(rows)
            except BadInput as exc:
                outcomes[r].error = exc
                continue
            spans.append((r, len(texts), len(prepared)))
            for text, image in prepared:
                texts.append(text)
                images.append(image)
        if not spans:
            return outcomes
        try:
            out = self.predictor.predict(texts, images)
        except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as exc:  # e.g. out of memory
            log.exception("inference failed for a batch of %d rows", len(texts))
            failure = FusionError(f"inference failed: {exc}")
            failure.retriable = True
            for r, _, _ in spans:
                outcomes[r].error = failure
            return outcomes
        for r, first, count in spans:
            outcomes[r].outputs = {
                "SENTIMENT": out["sentiment"][first : first + count],
                "CATEGORY": out["category"][first : first + count],
                "EMBEDDING": out["embedding"][first : first + count],
            }
        return outcomes
