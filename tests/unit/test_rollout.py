"""Model versions in the worker: per-version contract, version stamping without a restart, canary
routing, the shadow side path and live quality (streams.rollout, streams.inference, streams.contract)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from sklearn.metrics import f1_score
from streams_fakes import RecordingPublisher

from streams import metrics
from streams.contract import ModelInfo, ModelInput, ModelOutput, parse_model_config, rating_sentiment
from streams.errors import InferenceUnavailable
from streams.inference import InferenceService
from streams.lifecycle import Retry, RetryPolicy
from streams.records import SourceRecord
from streams.rollout import LiveQuality, Rollout, ShadowRunner, key_bucket, macro_f1
from streams.runtime import Runtime, build_runtime
from streams.settings import Settings

SENTIMENT = ["negative", "neutral", "positive"]
LABELS = ["tshirt_top", "dress", "sneaker"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def config(policy: list[int] | None, **params: str) -> dict[str, Any]:
    base = {
        "model_version_name": "fusion-1.0",
        "category_labels": json.dumps(LABELS),
        "embedding_dim": "4",
        "sentiment_labels": json.dumps(SENTIMENT),
    }
    cfg: dict[str, Any] = {"parameters": {k: {"string_value": v} for k, v in {**base, **params}.items()}}
    if policy is not None:
        cfg["version_policy"] = {"specific": {"versions": [str(v) for v in policy]}}
    return {"config": cfg}


# --- the per-version contract -------------------------------------------------------------------------
def test_a_parameter_at_a_version_overrides_the_models_for_that_version_only() -> None:
    cfg = config(
        [1, 2],
        **{"model_version_name@1": "fusion-1.0", "model_version_name@2": "fusion-2.0"},
        **{"embedding_dim@2": "8", "category_labels@2": json.dumps(["bag", *LABELS])},
    )
    one, two = parse_model_config("m", cfg, "1"), parse_model_config("m", cfg, "2")
    assert (one.version, one.embedding_dim, one.category_labels) == ("fusion-1.0", 4, tuple(LABELS))
    assert (two.version, two.embedding_dim, two.category_labels) == ("fusion-2.0", 8, ("bag", *LABELS))
    assert (one.triton_version, two.triton_version) == ("1", "2")


def test_versions_served_side_by_side_never_share_a_name() -> None:
    # One model-wide name and two versions: neither may claim it alone.
    cfg = config([1, 2])
    assert parse_model_config("m", cfg, "1").version == "fusion-1.0@1"
    assert parse_model_config("m", cfg, "2").version == "fusion-1.0@2"
    # A policy that serves one version: the model's name is that version's (the repository as shipped).
    assert parse_model_config("m", config([1]), "1").version == "fusion-1.0"
    assert parse_model_config("m", config(None), "").version == "fusion-1.0"


def test_a_version_that_breaks_the_sentiment_contract_is_refused() -> None:
    from streams.errors import BadModelResponse

    cfg = config([1, 2], **{"sentiment_labels@2": json.dumps(["bad", "good", "ok"])})
    assert parse_model_config("m", cfg, "1").sentiment_labels == tuple(SENTIMENT)
    with pytest.raises(BadModelResponse, match="sentiment labels"):
        parse_model_config("m", cfg, "2")


@pytest.mark.parametrize(
    ("stars", "label"), [(1, "negative"), (2, "negative"), (3, "neutral"), (5, "positive")]
)
def test_a_rating_is_its_reviews_own_label(stars: int, label: str) -> None:
    assert rating_sentiment(stars) == label


# --- canary routing -----------------------------------------------------------------------------------
def test_the_canary_takes_its_share_of_keys_and_each_key_keeps_its_version() -> None:
    rollout = Rollout("2", 0.2)
    keys = [f"product-{i}" for i in range(5000)]
    first = {k: rollout.route(k) for k in keys}
    share = sum(v == "2" for v in first.values()) / len(keys)
    assert 0.18 < share < 0.22
    assert all(rollout.route(k) == v for k, v in first.items())  # stable per key
    assert {v for v in first.values()} == {"", "2"}
    # Raising the fraction only adds keys: none of the canary's leaves it.
    wider = Rollout("2", 0.5)
    assert all(wider.route(k) == "2" for k, v in first.items() if v == "2")
    # The hash is the same in every process: a fixed key has a fixed bucket.
    assert key_bucket("product-0") == pytest.approx(key_bucket("product-0"))
    assert 0 <= key_bucket("") < 1


def test_a_canary_not_ready_sends_its_keys_and_its_waiting_batches_to_the_primary() -> None:
    rollout = Rollout("2", 1.0)
    assert rollout.route("p") == "2" and rollout.effective("2") == "2"
    rollout.canary_ready = False
    assert rollout.route("p") == "" and rollout.effective("2") == ""
    assert Rollout().route("p") == "" and Rollout("2", 0.0).route("p") == ""


def test_settings_refuse_a_canary_fraction_without_a_version() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ECOM_CANARY_VERSION"):
        Settings(canary_fraction=0.1)
    with pytest.raises(ValidationError):
        Settings(shadow_version="latest")  # versions are Triton's numbers
    assert Settings(canary_version="2", canary_fraction=0.1).canary_fraction == 0.1


# --- live quality -------------------------------------------------------------------------------------
def test_macro_f1_is_sklearns() -> None:
    rng = np.random.default_rng(0)
    actual = [SENTIMENT[i] for i in rng.integers(0, 3, 300)]
    predicted = [a if rng.random() < 0.7 else SENTIMENT[rng.integers(0, 3)] for a in actual]
    expected = f1_score(actual, predicted, average="macro")
    assert macro_f1(list(zip(predicted, actual, strict=True))) == pytest.approx(expected)
    assert macro_f1([("positive", "positive")]) == 1.0


def test_live_f1_is_per_version_over_its_last_window_and_absent_until_full() -> None:
    quality = LiveQuality(window=10)
    version = "lq-test-7"
    for _ in range(9):
        quality.observe(version, "positive", "positive")
    assert REGISTRY.get_sample_value("ecom_live_macro_f1", {"version": version}) is None
    quality.observe(version, "negative", "positive")
    assert quality.f1(version) == pytest.approx(
        macro_f1([("positive", "positive")] * 9 + [("negative", "positive")])
    )
    for _ in range(10):  # the window slides: only the last ten count
        quality.observe(version, "neutral", "neutral")
    assert sample("ecom_live_macro_f1", version=version) == 1.0
    assert sample("ecom_live_sentiment_total", version=version, predicted="neutral", actual="neutral") == 10


# --- versions through the inference service -------------------------------------------------------------
class VersionedModel:
    """Versions "1" and "2" (Triton's latest is "latest"); each output carries the version that answered.
    `hang` versions never answer; `broken` versions fail; `ready` says which versions are loaded."""

    def __init__(self, latest: str = "1") -> None:
        self.latest = latest
        self.requests: list[tuple[str, int]] = []
        self.hang: set[str] = set()
        self.broken: set[str] = set()
        self.loaded = {"1", "2"}

    async def infer(self, rows: Sequence[ModelInput], version: str = "") -> list[ModelOutput]:
        answering = version or self.latest
        self.requests.append((answering, len(rows)))
        if answering in self.hang:
            await asyncio.Event().wait()
        if answering in self.broken or answering not in self.loaded:
            raise InferenceUnavailable(f"StatusCode.NOT_FOUND: unknown model version {answering}")
        out = []
        for r in rows:
            negative = b"awful" in r.text
            sentiment = np.array([0.8, 0.1, 0.1] if negative else [0.1, 0.1, 0.8], np.float32)
            emb = np.array([1.0, 2.0, 2.0, 4.0], np.float32)
            out.append(
                ModelOutput(
                    sentiment, np.array([0.1, 0.7, 0.2], np.float32), emb / np.linalg.norm(emb), answering
                )
            )
        return out

    async def info(self, version: str = "") -> ModelInfo:
        v = version or self.latest
        return ModelInfo("ecom_fusion", f"fusion-{v}.0", tuple(LABELS), 4, tuple(SENTIMENT), v)

    async def ready(self, version: str = "") -> bool:
        return (version or self.latest) in self.loaded

    async def close(self) -> None:
        return None


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def service(model: VersionedModel, **kw: Any) -> InferenceService:
    return InferenceService(
        model,
        kinds=("review", "product"),
        max_batch=16,
        linger=0.01,
        max_in_flight=2,
        retry=Retry(RetryPolicy(0.001, 0.01, 3), no_sleep),
        **kw,
    )


def row(text: str, reference: str | None = None) -> ModelInput:
    return ModelInput(text=text.encode(), image=b"", reference_sentiment=reference)


async def test_rows_of_different_versions_never_share_a_request() -> None:
    model = VersionedModel()
    svc = service(model)
    try:
        outputs = await asyncio.gather(
            *(svc.infer("review", row(f"t{i}"), "2" if i % 3 == 0 else "") for i in range(12))
        )
    finally:
        await svc.close()
    assert [o.version for o in outputs] == ["2" if i % 3 == 0 else "1" for i in range(12)]
    assert sorted(model.requests) == [("1", 8), ("2", 4)]


async def test_a_canary_unloaded_while_its_rows_wait_hands_them_to_the_primary() -> None:
    rollout = Rollout("2", 1.0)

    class Unloading(VersionedModel):
        async def infer(self, rows: Sequence[ModelInput], version: str = "") -> list[ModelOutput]:
            if version == "2":  # unloaded under the request; the runtime's probe then sees it
                self.loaded.discard("2")
                rollout.canary_ready = await self.ready("2")
            return await super().infer(rows, version)

    model = Unloading()
    svc = service(model, rollout=rollout)
    try:
        assert rollout.route("p") == "2"
        output = await asyncio.wait_for(svc.infer("product", row("x"), rollout.route("p")), 5)
    finally:
        await svc.close()
    assert output.version == "1"
    assert model.requests == [("2", 1), ("1", 1)]  # the retry went to the primary
    assert rollout.route("p") == ""


async def test_a_shadow_that_hangs_or_fails_never_holds_up_the_primary() -> None:
    for trouble in ("hang", "broken"):
        model = VersionedModel()
        getattr(model, trouble).add("2")
        quality = LiveQuality(window=10)
        shadow = ShadowRunner(model, "2", quality=quality, queue_batches=1, timeout_s=1.0)
        svc = service(model, shadow=shadow)
        kind = "review"
        dropped = {
            r: sample("ecom_shadow_dropped_total", kind=kind, reason=r)
            for r in ("queue_full", "timeout", "error")
        }
        try:
            for i in range(5):  # one request at a time: every one is offered to the shadow
                out = await asyncio.wait_for(svc.infer(kind, row(f"t{i}")), 5)
                assert out.version == "1"
            await asyncio.wait_for(shadow.drain(), 5)
        finally:
            await svc.close()
        now = {r: sample("ecom_shadow_dropped_total", kind=kind, reason=r) - dropped[r] for r in dropped}
        # Every offered row is accounted for: compared (none here) or dropped with its reason.
        assert sum(now.values()) == 5, now
        assert now["timeout" if trouble == "hang" else "error"] >= 1
        if trouble == "hang":
            assert now["queue_full"] >= 1  # the queue held one batch while the shadow hung


async def test_a_version_against_itself_agrees_fully_and_its_live_quality_is_counted() -> None:
    model = VersionedModel()
    quality = LiveQuality(window=10)
    shadow = ShadowRunner(model, "1", quality=quality)
    svc = service(model, shadow=shadow)
    before = {
        (k, a, o): sample("ecom_shadow_agreement_total", kind=k, aspect=a, outcome=o)
        for k in ("review", "product")
        for a in ("sentiment", "category", "embedding")
        for o in ("agree", "disagree", "incomparable")
    }
    rated = sample("ecom_live_sentiment_total", version="1", predicted="negative", actual="negative")
    try:
        await asyncio.gather(
            *(svc.infer("review", row(f"awful {i}", "negative")) for i in range(10)),
            *(svc.infer("product", row(f"item {i}")) for i in range(6)),
        )
        await shadow.drain()
    finally:
        await svc.close()
    delta = {
        key: sample("ecom_shadow_agreement_total", kind=key[0], aspect=key[1], outcome=key[2]) - n
        for key, n in before.items()
    }
    assert delta[("review", "sentiment", "agree")] == 10
    assert delta[("product", "category", "agree")] == 6 and delta[("product", "embedding", "agree")] == 6
    assert sum(n for (_, _, o), n in delta.items() if o != "agree") == 0
    # The shadow's answers to rated reviews count for its own version's live quality.
    assert (
        sample("ecom_live_sentiment_total", version="1", predicted="negative", actual="negative") - rated
        == 10
    )


async def test_a_different_shadow_version_is_compared_by_label_name() -> None:
    model = VersionedModel()

    class Disagreeing(VersionedModel):
        async def infer(self, rows: Sequence[ModelInput], version: str = "") -> list[ModelOutput]:
            outs = await super().infer(rows, version)
            if (version or self.latest) == "2":  # version 2 calls everything positive
                outs = [
                    ModelOutput(np.array([0.0, 0.0, 1.0], np.float32), o.category, o.embedding, "2")
                    for o in outs
                ]
            return outs

    model = Disagreeing()
    shadow = ShadowRunner(model, "2", quality=LiveQuality(window=10))
    before = sample("ecom_shadow_agreement_total", kind="review", aspect="sentiment", outcome="disagree")
    svc = service(model, shadow=shadow)
    try:
        await asyncio.gather(*(svc.infer("review", row("awful")) for _ in range(4)))
        await shadow.drain()
    finally:
        await svc.close()
    assert (
        sample("ecom_shadow_agreement_total", kind="review", aspect="sentiment", outcome="disagree") - before
        == 4
    )


# --- the worker's wiring: stamping without a restart --------------------------------------------------
def runtime(model: VersionedModel, **overrides: Any) -> tuple[Runtime, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings = Settings.model_validate(
        {"batch_max_size": 8, "batch_linger_ms": 2, "retry_backoff_initial_s": 0.001, **overrides}
    )
    return build_runtime(settings, None, model=model, publisher=publisher), publisher


def review(i: int, product: str, rating: int | None = 5) -> SourceRecord:
    event = {
        "event_id": f"e{i}",
        "review_id": f"r{i}",
        "product_id": product,
        "user_id": "u",
        "text": "lovely",
        "rating": rating,
        "ts": 0,
    }
    return SourceRecord("reviews", 0, i, product.encode(), orjson.dumps(event), 1.7e9)


async def test_outputs_carry_the_version_that_answered_when_a_new_one_is_loaded() -> None:
    model = VersionedModel(latest="1")
    rt, pub = runtime(model)
    try:
        assert await rt.pipeline.handle(review(1, "p1")) == "enriched"
        model.latest = "2"  # version 2 loaded: Triton's latest answers from now on
        assert await rt.pipeline.handle(review(2, "p1")) == "enriched"
    finally:
        await rt.close()
    assert [v["model"] for v in pub.on("review-sentiment")] == [
        {"name": "ecom_fusion", "version": "fusion-1.0"},
        {"name": "ecom_fusion", "version": "fusion-2.0"},
    ]


async def test_a_canary_product_always_sees_the_canary_and_the_rest_the_primary() -> None:
    model = VersionedModel(latest="1")
    rt, pub = runtime(model, canary_version="2", canary_fraction=0.3)
    products = [f"p{i % 40}" for i in range(200)]
    try:
        done = await asyncio.gather(*(rt.pipeline.handle(review(i, p)) for i, p in enumerate(products)))
    finally:
        await rt.close()
    assert set(done) == {"enriched"}
    seen: dict[str, set[str]] = {}
    for value in pub.on("review-sentiment"):
        seen.setdefault(str(value["product_id"]), set()).add(value["model"]["version"])  # type: ignore[index]
    assert all(len(versions) == 1 for versions in seen.values())
    canary = {p for p, versions in seen.items() if versions == {"fusion-2.0"}}
    assert canary == {p for p in seen if Rollout("2", 0.3).route(p) == "2"}
    assert 0 < len(canary) < len(seen)


async def test_rated_reviews_feed_the_live_quality_of_the_version_that_answered() -> None:
    model = VersionedModel(latest="1")
    rt, _ = runtime(model, live_f1_window=10)
    before = sample("ecom_live_sentiment_total", version="1", predicted="positive", actual="negative")
    try:
        for i in range(12):
            await rt.pipeline.handle(review(100 + i, "p", rating=1 if i % 2 else None))
    finally:
        await rt.close()
    # Six rated one-star reviews, each predicted positive ("lovely"); unrated ones are not counted.
    assert (
        sample("ecom_live_sentiment_total", version="1", predicted="positive", actual="negative") - before
        == 6
    )
    assert metrics.LIVE_F1_FLOOR._value.get() == Settings().live_f1_floor  # type: ignore[attr-defined]


# --- the Triton client: the version that answered, described without a restart ------------------------
class FakeGrpc:
    """The parts of tritonclient's asyncio gRPC client the service uses; `answering` is Triton's latest."""

    def __init__(self) -> None:
        self.config = config([1], **{"model_version_name@1": "fusion-1.0"})
        self.answering = "1"
        self.config_reads = 0
        self.asked: list[str] = []

    async def get_model_config(self, model: str, as_json: bool = False, client_timeout: float = 0) -> Any:
        self.config_reads += 1
        return json.loads(json.dumps(self.config))

    async def get_model_metadata(self, model: str, as_json: bool = False, client_timeout: float = 0) -> Any:
        return {"versions": [self.answering]}

    async def infer(self, model: str, inputs: Any, model_version: str = "", **_: Any) -> Any:
        self.asked.append(model_version)
        version, n = model_version or self.answering, inputs[0].shape()[0]

        class Result:
            def as_numpy(self, name: str) -> Any:
                width = {"SENTIMENT": 3, "CATEGORY": 3, "EMBEDDING": 4}[name]
                return np.full((n, width), 0.5, np.float32)

            def get_response(self) -> Any:
                return type("Response", (), {"model_version": version})()

        return Result()


async def test_the_client_stamps_the_answering_version_and_reads_a_new_ones_config_once() -> None:
    from streams.triton_client import TritonModel

    grpc = FakeGrpc()
    model = TritonModel("triton:8001", "ecom_fusion", timeout=5)
    model._client = grpc
    model.REREAD_S = 0.0  # every miss of an unknown version reads the config again
    [out] = await model.infer([row("a")])
    assert out.version == "1" and (await model.info(out.version)).version == "fusion-1.0"
    # Version 2 is loaded (the config now names it) and becomes the latest: no restart.
    grpc.config = config(
        [1, 2], **{"model_version_name@1": "fusion-1.0", "model_version_name@2": "fusion-2.0"}
    )
    grpc.answering = "2"
    reads = grpc.config_reads
    [out] = await model.infer([row("b")])
    assert out.version == "2" and (await model.info("2")).version == "fusion-2.0"
    assert grpc.config_reads == reads + 1
    # Interleaved answers from both versions read nothing more: the config read last names both.
    for version in ("1", "2", "1", "2"):
        assert (await model.info(version)).version == f"fusion-{version}.0"
    assert grpc.config_reads == reads + 1
    # A request can name its version; the default is the client's own.
    pinned = TritonModel("triton:8001", "ecom_fusion", timeout=5, version="1")
    pinned._client = grpc
    [out] = await pinned.infer([row("c")])
    assert out.version == "1" and grpc.asked[-1] == "1"
    [out] = await pinned.infer([row("d")], version="2")
    assert out.version == "2" and grpc.asked[-1] == "2"
