"""Inference: error classification, config parsing, retries with backoff, bisection of a rejected batch."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from streams.contract import ModelInfo, ModelInput, ModelOutput, parse_model_config, split_outputs
from streams.errors import (
    BadModelResponse,
    InferenceTimeout,
    InferenceUnavailable,
    ModelRejected,
)
from streams.inference import InferenceService
from streams.lifecycle import Retry, RetryPolicy
from streams.triton_client import classify_triton_error

SENTIMENT = ("negative", "neutral", "positive")
INFO = ModelInfo("ecom_fusion", "test", ("a", "b"), 4, SENTIMENT)


def row(text: str) -> ModelInput:
    return ModelInput(text=text.encode(), image=b"")


def output_for(r: ModelInput) -> ModelOutput:
    n = float(len(r.text))
    return ModelOutput(
        sentiment=np.array([0.2, 0.3, 0.5], np.float32),
        category=np.array([n, 1.0], np.float32),
        embedding=np.ones(4, np.float32) / 2,
    )


class FakeModel:
    """Rejects any request containing a row whose text starts with "bad"; fails transiently first."""

    def __init__(self, transient_failures: int = 0, ambiguous: bool = False) -> None:
        self.calls: list[int] = []
        self.transient_failures = transient_failures
        self.ambiguous = ambiguous

    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        self.calls.append(len(rows))
        if self.transient_failures:
            self.transient_failures -= 1
            raise InferenceUnavailable("StatusCode.UNAVAILABLE: connection refused")
        if any(r.text.startswith(b"bad") for r in rows):
            raise ModelRejected("StatusCode.INVALID_ARGUMENT: image is corrupt", ambiguous=self.ambiguous)
        return [output_for(r) for r in rows]

    async def info(self) -> ModelInfo:
        return INFO


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def service(model: FakeModel, sleep: Sleeps, max_batch: int = 8) -> InferenceService:
    return InferenceService(
        model,
        kinds=("review", "product"),
        max_batch=max_batch,
        linger=0.01,
        max_in_flight=2,
        retry=Retry(RetryPolicy(0.1, 1.0, 3), sleep),
    )


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", InferenceUnavailable),
        ("StatusCode.RESOURCE_EXHAUSTED", "queue full", InferenceUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceTimeout),
        (
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'ecom_fusion' is not found",
            InferenceUnavailable,
        ),
        ("StatusCode.INVALID_ARGUMENT", "image is truncated", ModelRejected),
        ("StatusCode.INTERNAL", "Failed to process the request(s)", ModelRejected),
    ],
)
def test_triton_errors_are_classified(status: str, message: str, kind: type[Exception]) -> None:
    error = classify_triton_error(status, message)
    assert isinstance(error, kind)
    assert error.retriable is (kind is not ModelRejected)


def test_server_errors_are_ambiguous_unless_the_model_names_a_bad_input() -> None:
    internal = classify_triton_error("StatusCode.INTERNAL", "Failed to process the request(s)")
    invalid = classify_triton_error("StatusCode.INVALID_ARGUMENT", "bad image")
    named = classify_triton_error("StatusCode.INTERNAL", "ImageTooLarge: image is 9000000 bytes")
    assert isinstance(internal, ModelRejected) and internal.ambiguous
    assert isinstance(invalid, ModelRejected) and not invalid.ambiguous
    assert isinstance(named, ModelRejected) and not named.ambiguous


def test_model_config_parameters_give_version_labels_and_size() -> None:
    config = {
        "config": {
            "name": "ecom_fusion",
            "parameters": {
                "model_version_name": {"string_value": "fusion-2024-01"},
                "category_labels": {"string_value": json.dumps(["dress", "sneaker"])},
                "embedding_dim": {"string_value": "256"},
                "sentiment_labels": {"string_value": json.dumps(["positive", "neutral", "negative"])},
            },
        }
    }
    info = parse_model_config("ecom_fusion", config)
    reordered = ("positive", "neutral", "negative")  # the model's own order is kept
    assert info == ModelInfo("ecom_fusion", "fusion-2024-01", ("dress", "sneaker"), 256, reordered)


def test_model_config_with_other_sentiment_labels_is_a_bad_response() -> None:
    params = {
        "category_labels": {"string_value": json.dumps(["dress"])},
        "embedding_dim": {"string_value": "4"},
        "sentiment_labels": {"string_value": json.dumps(["bad", "ok", "good"])},
    }
    with pytest.raises(BadModelResponse, match="sentiment labels"):
        parse_model_config("ecom_fusion", {"config": {"parameters": params}})


def test_model_config_without_labels_is_a_bad_response() -> None:
    with pytest.raises(BadModelResponse):
        parse_model_config("ecom_fusion", {"config": {"parameters": {}}})


def test_outputs_are_split_per_row_and_shapes_checked() -> None:
    outs = split_outputs(2, np.ones((2, 3)), np.ones((2, 5)), np.ones((2, 4)))
    assert len(outs) == 2 and outs[1].category.shape == (5,)
    with pytest.raises(BadModelResponse):
        split_outputs(2, np.ones((1, 3)), np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(BadModelResponse):
        split_outputs(2, np.ones((2, 2)), np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(BadModelResponse):
        split_outputs(2, np.ones((2, 3)), None, np.ones((2, 4)))


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial=0.1, maximum=2.0)
    assert 0.05 <= policy.backoff(0) <= 0.1
    assert 0.4 <= policy.backoff(3) <= 0.8
    assert 1.0 <= policy.backoff(30) <= 2.0


async def test_a_rejected_row_fails_alone_the_rest_of_its_batch_succeeds() -> None:
    import asyncio

    model, sleeps = FakeModel(), Sleeps()
    svc = service(model, sleeps)
    texts = ["good one", "good two", "bad image", "good three", "good four", "good five"]
    results = await asyncio.gather(*(svc.infer("review", row(t)) for t in texts), return_exceptions=True)
    for text, result in zip(texts, results, strict=True):
        if text.startswith("bad"):
            assert isinstance(result, ModelRejected)
        else:
            assert isinstance(result, ModelOutput)
            assert result.category[0] == len(text)  # each caller got its own row's output
    assert model.calls[0] == 6  # one request first, then bisection
    assert sleeps.delays == []  # a rejection is not retried
    await svc.close()


async def test_transient_failures_are_retried_with_backoff_not_dead_lettered() -> None:
    model, sleeps = FakeModel(transient_failures=5), Sleeps()
    svc = service(model, sleeps)
    result = await svc.infer("product", row("good"))
    assert isinstance(result, ModelOutput)
    assert len(sleeps.delays) == 5
    assert sleeps.delays[-1] > sleeps.delays[0] / 2  # grows (with jitter)
    await svc.close()


async def test_an_ambiguous_single_row_error_gets_a_few_tries_then_fails() -> None:
    model, sleeps = FakeModel(ambiguous=True), Sleeps()
    svc = service(model, sleeps)
    with pytest.raises(ModelRejected):
        await svc.infer("review", row("bad again"))
    # retry_max_ambiguous = 3 tries, each followed by a known-good row that the model answers
    assert model.calls == [1, 1, 1, 1, 1, 1]
    assert len(sleeps.delays) == 2
    await svc.close()


async def test_info_waits_for_the_model() -> None:
    class Late(FakeModel):
        tries = 0

        async def info(self) -> ModelInfo:
            self.tries += 1
            if self.tries < 3:
                raise InferenceUnavailable("not ready")
            return INFO

    sleeps = Sleeps()
    svc = service(Late(), sleeps)
    assert await svc.info() == INFO
    assert len(sleeps.delays) == 2
    await svc.close()
