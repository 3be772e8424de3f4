"""A model server that fails for reasons of its own never dead-letters good events, and is not "ready".

The fakes raise what `TritonModel` raises for Triton's answers (`classify_triton_error` on the gRPC
status and message), such as Triton's INTERNAL "Stub process ... is not healthy" once the Python
backend's stub processes are dead, while Triton itself still reports the server and the model ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from streams_fakes import FakeModel, RecordingPublisher

from streams.app import create_app
from streams.contract import ModelInput, ModelOutput
from streams.errors import ModelRejected, ModelServerFault
from streams.health import Health
from streams.inference import InferenceService, known_good_row
from streams.lifecycle import Retry, RetryPolicy
from streams.settings import Settings
from streams.triton_client import classify_triton_error

STUB_DEAD = (
    "Failed to process the request(s) for model instance 'ecom_fusion_0_0', "
    "message: Stub process 'ecom_fusion_0_0' is not healthy."
)
# An INTERNAL error that names no bad input: the request's fault or the server's, nobody says.
OPAQUE = "Failed to process the request(s) for model instance 'ecom_fusion_0_1', message: RuntimeError: oops"


def output() -> ModelOutput:
    return ModelOutput(np.ones(3, np.float32) / 3, np.ones(2, np.float32) / 2, np.ones(4, np.float32) / 2)


class Server:
    """A model behind Triton: `down` requests fail with `message` (INTERNAL) whatever they hold; rows whose
    text starts with "poison" fail with `OPAQUE` whenever the server is up."""

    def __init__(self, down: int = 0, message: str = STUB_DEAD) -> None:
        self.down = down
        self.message = message
        self.requests: list[list[bytes]] = []

    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        self.requests.append([r.text for r in rows])
        if self.down:
            self.down -= 1
            raise classify_triton_error("StatusCode.INTERNAL", self.message)
        if any(r.text.startswith(b"poison") for r in rows):
            raise classify_triton_error("StatusCode.INTERNAL", OPAQUE)
        return [output() for _ in rows]

    async def info(self) -> None:  # not used here
        raise NotImplementedError

    async def ready(self) -> bool:
        return True  # what Triton says about a model whose stubs are dead

    async def close(self) -> None:
        return None


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def service(model: Server, sleeps: Sleeps, max_batch: int = 16) -> InferenceService:
    return InferenceService(
        model,  # type: ignore[arg-type]  (info() is not part of what is tested)
        kinds=("review", "product"),
        max_batch=max_batch,
        linger=0.05,
        max_in_flight=1,
        retry=Retry(RetryPolicy(0.1, 1.0, 3), sleeps),
    )


def rows(n: int, poisoned: Sequence[int] = ()) -> list[ModelInput]:
    return [ModelInput(f"{'poison' if i in poisoned else 'review'} {i}".encode(), b"") for i in range(n)]


async def run(svc: InferenceService, batch: list[ModelInput]) -> list[ModelOutput | BaseException]:
    try:
        return await asyncio.gather(*(svc.infer("review", r) for r in batch), return_exceptions=True)
    finally:
        await svc.close()


def test_a_dead_stub_is_the_server_s_fault_and_retriable() -> None:
    error = classify_triton_error("StatusCode.INTERNAL", STUB_DEAD)
    assert isinstance(error, ModelServerFault) and error.retriable
    assert not isinstance(error, ModelRejected)


async def test_a_dead_stub_is_retried_until_it_is_back_and_no_event_is_dead_lettered() -> None:
    server, sleeps = Server(down=40), Sleeps()
    results = await run(service(server, sleeps), rows(16))
    assert all(isinstance(r, ModelOutput) for r in results), [
        r for r in results if not isinstance(r, ModelOutput)
    ]
    assert len(sleeps.delays) == 40  # one backoff per failed request
    assert {len(r) for r in server.requests} == {16}  # never bisected: the batch was never the suspect


async def test_an_opaque_error_on_every_row_is_retried_not_bisected_to_dead_letters() -> None:
    # Every request fails with an INTERNAL error naming no bad input, the known-good row included.
    server, sleeps = Server(down=30, message=OPAQUE), Sleeps()
    results = await run(service(server, sleeps), rows(16))
    assert all(isinstance(r, ModelOutput) for r in results)
    batches = [r for r in server.requests if r != [known_good_row("review").text]]
    assert {len(b) for b in batches} == {16}, "a server fault must not split the batch"
    assert sleeps.delays, "retried with backoff"


async def test_a_poisoned_row_is_dead_lettered_alone_while_the_server_answers_others() -> None:
    server, sleeps = Server(), Sleeps()
    results = await run(service(server, sleeps), rows(16, poisoned=[5]))
    rejected = [i for i, r in enumerate(results) if isinstance(r, ModelRejected)]
    assert rejected == [5]
    assert all(isinstance(r, ModelOutput) for i, r in enumerate(results) if i != 5)


async def test_an_outage_during_bisection_dead_letters_no_good_row() -> None:
    """The batch holds one poisoned row; the server then dies for a while mid-bisection. Only the
    poisoned row ends as a dead letter, once the server answers again."""

    class Dying(Server):
        async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
            if len(self.requests) == 3:  # after the first failure and its known-good check
                self.down, self.message = 25, OPAQUE
            return await super().infer(rows)

    server, sleeps = Dying(), Sleeps()
    results = await run(service(server, sleeps), rows(16, poisoned=[11]))
    assert [i for i, r in enumerate(results) if isinstance(r, ModelRejected)] == [11]
    assert server.down == 0 and sleeps.delays


# --- readiness -------------------------------------------------------------------------------------------
@pytest.fixture
def health() -> Iterator[Health]:
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="t-")
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    assert app.runtime.health is not None
    yield app.runtime.health
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


async def test_readiness_needs_a_real_answer_from_the_model(health: Health) -> None:
    health.model = Server()
    await health._probe_triton()
    assert health.triton_up, health.detail
    assert "known-good" in health.detail["triton"]

    health.model = Server(down=10**6)  # Triton: server ready, model ready; the stubs: dead
    await health._probe_triton()
    assert not health.triton_up
    ok, body = health.ready()
    assert not ok and body["triton"] is False
    assert "known-good" in body["detail"]["triton"] and "Stub process" in body["detail"]["triton"]
    assert "ModelServerFault" in body["detail"]["triton"]

    health.model = Server()  # the stubs are back
    await health._probe_triton()
    assert health.triton_up


async def test_the_known_good_rows_pass_the_model_s_own_input_checks() -> None:
    from streams.validation import Limits, check_image, check_text

    for kind in ("review", "product"):
        row = known_good_row(kind)
        check_text(row.text.decode(), Limits())
        if row.image:
            check_image(row.image, Limits())
    assert known_good_row("product").image, "the image path is probed too"
