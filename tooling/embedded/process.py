"""A child process that is started, waited for and stopped by its own PID, never by name."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does.

    The servers run in their own process groups (so a terminal's Ctrl-C reaches only us), so they outlive
    a command that dies of a plain SIGTERM (`kill`, `timeout`); turned into KeyboardInterrupt, the signal
    unwinds the `with` / `finally` blocks that stop them by PID. Main thread only, as `signal.signal`.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProcessStartError(RuntimeError):
    """A managed process exited or never became ready."""


class ManagedProcess:
    """Start a command in its own process group, wait until `ready()` says so, stop it by PID.

    Output goes to `log_path` so a failure can be diagnosed after the fact.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: we can signal it and its children
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                # Its children (Triton's Python stubs) may outlive it: they are in its process group.
                self._signal_group(self.proc.pid, signal.SIGKILL)
                raise ProcessStartError(
                    f"{self.name} exited with code {code} during start-up; last output:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                if ready():
                    log.info("%s ready (pid %d)", self.name, self.proc.pid)
                    return
            time.sleep(0.2)
        self.stop()
        raise ProcessStartError(f"{self.name} not ready after {timeout:.0f}s; last output:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process group we created, then SIGKILL after `grace` seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            self._signal_group(proc.pid, signal.SIGKILL)  # children left behind by an exited leader
            return
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", self.name, proc.pid, grace)
            self._signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as when a pod dies: no chance to commit or flush."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        # The group id equals the pid because the child was started with start_new_session=True.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
