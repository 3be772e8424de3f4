"""Fixtures of the deployment-file tests: a throwaway Triton serving a trivial Python model, so the
names of Triton's own metrics can be read from a real server without loading the real model."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import TritonServer

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
"""

ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1000 }
input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""


def infer_echo(server: TritonServer, value: float) -> float:
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [value]}]})
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/echo/infer",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return float(json.load(resp)["outputs"][0]["data"][0])


@pytest.fixture(scope="module")
def echo_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving `echo`, after a few real inferences, so its per-model metrics have values."""
    repository = tmp_path_factory.mktemp("echo-repository")
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    logs = tmp_path_factory.mktemp("echo-triton-logs")
    with TritonServer(Path(repository), ["echo"], log_dir=logs) as server:
        for value in (1.0, 2.0, 3.0):
            assert infer_echo(server, value) == 2 * value
        yield server
