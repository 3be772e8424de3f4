"""The model contract of `ecom_fusion` as values: one request row, one output row, the model's identity.

Independent of the transport (gRPC, an in-process fake): `streams.triton_client` speaks it to Triton,
the pipeline and `streams.enrich` read it. What a model declares about itself (version name, labels,
embedding size) comes from its `config.pbtxt` parameters, read by `parse_model_config` for one Triton
version at a time: Triton's config is per model, so a parameter `<key>@<version>` (e.g.
`model_version_name@2`) overrides `<key>` for that version alone (docs/architecture.md, "Versions").
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
    """What one version of the model declares: the name stamped on outputs, its labels, its sizes."""

    name: str
    version: str  # the version's name, as output events carry it (`model.version`)
    category_labels: tuple[str, ...]
    embedding_dim: int
    sentiment_labels: tuple[str, ...]
    triton_version: str = ""  # Triton's version number this describes; "" when not known (a fake)


@dataclass(frozen=True)
class ModelInput:
    """One row of an `ecom_fusion` request: UTF-8 text and encoded image bytes, either may be empty.

    `reference_sentiment`: the label the event gives itself (a review's star rating, `rating_sentiment`),
    never sent to the model; the live-quality counters compare predictions with it."""

    text: bytes
    image: bytes
    reference_sentiment: str | None = None


@dataclass(frozen=True)
class ModelOutput:
    sentiment: Vector
    category: Vector
    embedding: Vector
    version: str = ""  # the Triton version that answered (from the response); "" when not known


def rating_sentiment(rating: int) -> str:
    """A review's own label from its stars: 1-2 negative, 3 neutral, 4-5 positive."""
    if not 1 <= rating <= 5:
        raise ValueError(f"a rating is 1 to 5 stars, not {rating}")
    return "negative" if rating <= 2 else "neutral" if rating == 3 else "positive"


VERSION_SEPARATOR = "@"


def _version_policy_single(cfg: dict[str, Any]) -> bool:
    """Whether the config's version policy can serve one version only (a base name then names it)."""
    policy = cfg.get("version_policy") or {"latest": {"num_versions": 1}}
    if "specific" in policy:
        return len(policy["specific"].get("versions", [])) == 1
    if "latest" in policy:
        return int(policy["latest"].get("num_versions", 1)) == 1
    return False  # "all"


def policy_versions(config: dict[str, Any]) -> tuple[str, ...]:
    """The versions a `specific` version policy names, in order; () for `latest` and `all`."""
    cfg = config.get("config", config)
    policy = cfg.get("version_policy") or {}
    versions = policy.get("specific", {}).get("versions", [])
    return tuple(str(v) for v in sorted(int(v) for v in versions))


def declared_versions(config: dict[str, Any]) -> set[str]:
    """The versions a config speaks of: those its policy names and those with parameters of their own."""
    cfg = config.get("config", config)
    own = {k.rsplit(VERSION_SEPARATOR, 1)[1] for k in cfg.get("parameters", {}) if VERSION_SEPARATOR in k}
    return set(policy_versions(config)) | own


def parse_model_config(model: str, config: dict[str, Any], version: str = "") -> ModelInfo:
    """Version name, labels and embedding size of one Triton `version` from `config.pbtxt` `parameters`.

    `<key>@<version>` overrides `<key>` for that version. The name stamped on outputs is, in order:
    `model_version_name@<version>`; else `model_version_name` when the version policy serves one
    version only (it can then name no other); else `<model_version_name>@<version>`, so that two
    versions served side by side never carry the same name (docs/architecture.md, "Versions")."""
    cfg = config.get("config", config)
    base = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    params = {k: v for k, v in base.items() if VERSION_SEPARATOR not in k}
    suffix = f"{VERSION_SEPARATOR}{version}"
    if version:
        params |= {k.removesuffix(suffix): v for k, v in base.items() if k.endswith(suffix)}
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
    name = params.get("model_version_name") or "unknown"
    if version and f"model_version_name{suffix}" not in base and not _version_policy_single(cfg):
        name = f"{name}{suffix}"
    return ModelInfo(
        name=model,
        version=name,
        category_labels=labels,
        embedding_dim=dim,
        sentiment_labels=sentiment,
        triton_version=version,
    )


def split_outputs(
    n: int, sentiment: Any, category: Any, embedding: Any, *, version: str = ""
) -> list[ModelOutput]:
    """One `ModelOutput` per row, after checking the shapes the contract promises; `version`: the
    Triton version that answered."""
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
    return [ModelOutput(sentiment=s[i], category=c[i], embedding=e[i], version=version) for i in range(n)]
