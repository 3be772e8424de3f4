"""The embedded servers started and stopped in one place: the demo, the evaluators, the benchmark and the
tests' fixtures all go through `embedded_stack`.

    with embedded_stack(log_dir) as servers:         # the broker, then Triton serving ecom_fusion
        settings = settings.model_copy(update={"kafka_bootstrap": servers.broker.url,
                                               "triton_grpc_url": servers.triton.grpc_url})
        worker = servers.start_worker(settings)       # optional: stopped first on the way out

On the way out, whatever the reason (the block ends, an exception, Ctrl-C, or SIGTERM, which raises
KeyboardInterrupt inside the block as Ctrl-C does when it runs in the main thread), every process it
started is stopped by its PID, in the reverse order of their starts: the workers, Triton, the broker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from streams.settings import Settings
from tooling.embedded.broker import Broker
from tooling.embedded.process import sigterm_as_interrupt
from tooling.embedded.triton import DEFAULT_MODEL_REPOSITORY, TritonServer
from tooling.embedded.worker import WorkerProcess


class EmbeddedServers:
    """What `embedded_stack` started; `started_s` holds the seconds each server took to be ready."""

    def __init__(self, log_dir: Path, stack: contextlib.ExitStack) -> None:
        self.log_dir = log_dir
        self.started_s: dict[str, float] = {}
        self._stack = stack
        self._broker: Broker | None = None
        self._triton: TritonServer | None = None

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("this embedded stack runs no broker")
        return self._broker

    @property
    def triton(self) -> TritonServer:
        if self._triton is None:
            raise RuntimeError("this embedded stack runs no Triton")
        return self._triton

    def start_worker(self, settings: Settings, name: str = "worker") -> WorkerProcess:
        """A worker process with these settings, started (it owns partitions when this returns); stopped
        before the servers."""
        worker = WorkerProcess(settings, log_dir=self.log_dir, name=name)
        self._stack.callback(worker.stop)
        worker.start()
        return worker


@contextlib.contextmanager
def embedded_stack(
    log_dir: Path,
    *,
    broker: bool = True,
    triton: bool = True,
    models: Sequence[str] = ("ecom_fusion",),
    model_repository: Path = DEFAULT_MODEL_REPOSITORY,
    triton_config: str | None = None,
    triton_timeout: float = 300.0,
) -> Iterator[EmbeddedServers]:
    """The broker and Triton (`models` from `model_repository`, with the config file `triton_config`
    when given), started in that order and ready; each can be left out. Their logs go to `log_dir`."""
    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            stack.enter_context(sigterm_as_interrupt())
        servers = EmbeddedServers(log_dir, stack)
        if broker:
            running_broker = Broker(log_dir=log_dir)
            stack.callback(running_broker.stop)  # also when it fails or is interrupted while starting
            t0 = time.perf_counter()
            servers._broker = running_broker.start()
            servers.started_s["broker"] = time.perf_counter() - t0
        if triton:
            server = TritonServer(model_repository, models, model_config_name=triton_config, log_dir=log_dir)
            stack.callback(server.stop)
            t0 = time.perf_counter()
            servers._triton = server.start(timeout=triton_timeout)
            servers.started_s["triton"] = time.perf_counter() - t0
        yield servers
