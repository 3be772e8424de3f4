"""The model contract of `ecom_fusion` as values: one request row, one output row, the model's identity.

Independent of the transport (gRPC, an in-process fake): `streams.triton_client` speaks it to Triton,
the pipeline and `streams.enrich` read it. What a model declares about itself (version, labels,
embedding size) comes from its `config.pbtxt` parameters, read by `parse_model_config`.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import BadModelResponse
from streams.events import SentimentLabel

Vector = npt.NDArray[np.float32]
# The labels an output event may carry; a model must declare exactly these (in its own order).
OUTPUT_SENTIMENT_LABELS: frozenset[str] = frozenset(typing.get_args(SentimentLabel))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    category_labels: tuple[str, ...]
    embedding_dim: int
    sentiment_labels: tuple[str, ...]


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


def parse_model_config(model: str, config: dict[str, Any]) -> ModelInfo:
    """Version, labels and embedding size from `config.pbtxt` `parameters` (docs/architecture.md)."""
    cfg = config.get("config", config)
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    try:
        labels = tuple(str(x) for x in json.loads(params["category_labels"]))
        sentiment = tuple(str(x) for x in json.loads(params["sentiment_labels"]))
        dim = int(params["embedding_dim"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BadModelResponse(
            f"model config of {model} lacks category_labels/sentiment_labels/embedding_dim: {exc}"
        ) from None
    if len(sentiment) != len(OUTPUT_SENTIMENT_LABELS) or set(sentiment) != OUTPUT_SENTIMENT_LABELS:
        raise BadModelResponse(
            f"model {model} declares sentiment labels {list(sentiment)}; "
            f"the output events carry {sorted(OUTPUT_SENTIMENT_LABELS)}"
        )
    version = params.get("model_version_name") or "unknown"
    return ModelInfo(
        name=model, version=version, category_labels=labels, embedding_dim=dim, sentiment_labels=sentiment
    )


def split_outputs(n: int, sentiment: Any, category: Any, embedding: Any) -> list[ModelOutput]:
    """One `ModelOutput` per row, after checking the shapes the contract promises."""
    arrays = {"SENTIMENT": sentiment, "CATEGORY": category, "EMBEDDING": embedding}
    for name, arr in arrays.items():
        if arr is None:
            raise BadModelResponse(f"response lacks output {name}")
        if arr.ndim != 2 or arr.shape[0] != n:
            raise BadModelResponse(f"output {name} has shape {arr.shape}, expected ({n}, k)")
    if sentiment.shape[1] != len(OUTPUT_SENTIMENT_LABELS):
        raise BadModelResponse(
            f"SENTIMENT has {sentiment.shape[1]} columns, expected {len(OUTPUT_SENTIMENT_LABELS)}"
        )
    s, c, e = (np.asarray(a, dtype=np.float32) for a in (sentiment, category, embedding))
    return [ModelOutput(sentiment=s[i], category=c[i], embedding=e[i]) for i in range(n)]
