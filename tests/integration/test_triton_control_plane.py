"""Triton's control plane is closed: on the real `tritonserver` of the embedded default, serving the
real `ecom_fusion` in explicit model-control mode, nobody without the admin key can load a model (with
client-supplied files, whose Python would run inside Triton), unload one, or reach the other restricted
APIs, over HTTP or gRPC; with the key, unloading and loading `ecom_fusion` works over both; and what the
workers use (health, model config, inference) still needs no key.

The module runs its own Triton on its own ports, so unloading the model never disturbs the session's
shared `triton` fixture; the fixture stops it by its handle.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.contract import ModelInput
from streams.triton_client import TritonModel
from tooling.embedded import TritonServer
from tooling.embedded.triton import ADMIN_HEADER, GRPC_HEADER_PREFIX, RESTRICTED_APIS, restricted_api_args

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "ecom_fusion"
INTRUDER = "intruder"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    logs = tmp_path_factory.mktemp("control-plane-triton")
    running = TritonServer(REPO_ROOT / "triton_models", [MODEL], log_dir=logs)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def http(server: TritonServer, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, str]:
    """(status, body) of one HTTP request; an error status is returned, not raised."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(
        f"{server.http_url}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


@pytest.fixture(scope="module")
def grpc(server: TritonServer) -> Iterator[Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield client
    finally:
        client.close()


def intruder_files(marker: Path) -> tuple[str, dict[str, bytes]]:
    """A model whose model.py, if Triton ever imported it, would write `marker`: the attack of a client that
    loads a model with files of its own (config and model.py) and so runs its code inside Triton."""
    config = {
        "name": INTRUDER,
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    code = (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\n"
        "class TritonPythonModel:\n    pass\n"
    )
    return json.dumps(config), {"file:1/model.py": code.encode()}


def refused_over_grpc(call: Any) -> str:
    """Run a gRPC call that must be refused; return Triton's message."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.message())


def wait_until(condition: Any, what: str, deadline_s: float = 120.0) -> None:
    """Poll `condition` until it holds; fail with `what` if it never does (not a timing assertion: the
    deadline only bounds a wait for a state change Triton makes in the background)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {deadline_s:.0f} s")
        time.sleep(0.2)


def model_ready(server: TritonServer, name: str = MODEL) -> bool:
    return http(server, "GET", f"/v2/models/{name}/ready")[0] == 200


def test_the_server_runs_in_explicit_mode_with_a_fresh_key(server: TritonServer) -> None:
    argv = server.process.argv
    assert "--model-control-mode=explicit" in argv and f"--load-model={MODEL}" in argv
    assert len(server.admin_key) >= 32
    rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={server.admin_key}"
    assert f"--http-restricted-api={rule}" in argv and f"--grpc-restricted-protocol={rule}" in argv
    assert model_ready(server)
    # Another server gets another key unless one is given; a key Triton would split is refused.
    other, given = TritonServer(REPO_ROOT / "triton_models"), TritonServer(admin_key="k" * 16)
    try:
        assert other.admin_key != server.admin_key
        assert given.admin_key == "k" * 16
    finally:
        shutil.rmtree(other.workdir, ignore_errors=True)
        shutil.rmtree(given.workdir, ignore_errors=True)
    for bad in ("short", "has:colon-and-more-chars", "has,comma-and-more-chars", "has=equals-and-more-chars"):
        with pytest.raises(ValueError, match="admin key"):
            restricted_api_args(bad)


def test_unauthenticated_load_with_client_files_is_refused_and_runs_nothing(
    server: TritonServer, grpc: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "intruder-ran"
    config, files = intruder_files(marker)
    body = {
        "parameters": {
            "config": config,
            **{name: base64.b64encode(content).decode() for name, content in files.items()},
        }
    }
    for headers in ({}, {ADMIN_HEADER: "not-the-key"}, {ADMIN_HEADER: server.admin_key[:-1]}):
        status, text = http(server, "POST", f"/v2/repository/models/{INTRUDER}/load", body, **headers)
        assert status == 403, (headers, status, text)
        assert "restricted" in text
    message = refused_over_grpc(lambda: grpc.load_model(INTRUDER, config=config, files=files))
    assert "restricted" in message and GRPC_HEADER_PREFIX + ADMIN_HEADER in message
    message = refused_over_grpc(
        lambda: grpc.load_model(
            INTRUDER, config=config, files=files, headers={GRPC_HEADER_PREFIX + ADMIN_HEADER: "wrong"}
        )
    )
    assert "restricted" in message
    # Nothing was loaded and its code never ran: the repository (read with the key) does not list it.
    status, index = http(server, "POST", "/v2/repository/index", {}, **server.admin_headers())
    assert status == 200
    assert INTRUDER not in {entry["name"] for entry in json.loads(index)}
    assert not model_ready(server, INTRUDER)
    assert not marker.exists()


def test_unauthenticated_unload_is_refused_over_http_and_grpc(server: TritonServer, grpc: Any) -> None:
    status, text = http(server, "POST", f"/v2/repository/models/{MODEL}/unload")
    assert status == 403 and "restricted" in text
    message = refused_over_grpc(lambda: grpc.unload_model(MODEL))
    assert "restricted" in message
    # The HTTP header name is not the gRPC metadata key: a client that sends the bare name is refused.
    message = refused_over_grpc(lambda: grpc.unload_model(MODEL, headers={ADMIN_HEADER: server.admin_key}))
    assert "restricted" in message
    assert model_ready(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/systemsharedmemory/region/anything/register"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/trace/setting"),
        ("POST", "/v2/logging"),
    ],
)
def test_the_other_restricted_apis_refuse_requests_without_the_key(
    server: TritonServer, method: str, path: str
) -> None:
    status, text = http(server, method, path, {} if method == "POST" else None)
    assert status == 403, (path, status, text)


def test_the_other_restricted_protocols_refuse_grpc_requests_without_the_key(grpc: Any) -> None:
    for call in (
        grpc.get_model_repository_index,
        grpc.get_system_shared_memory_status,
        grpc.get_trace_settings,
        grpc.get_log_settings,
    ):
        assert "restricted" in refused_over_grpc(call), call.__name__


async def test_what_the_workers_use_needs_no_key(server: TritonServer) -> None:
    """Health, model config and inference through the service's own client, with no key."""
    model = TritonModel(server.grpc_url, MODEL, timeout=60)
    try:
        assert await model.ready()
        info = await model.info()
        outputs = await model.infer([ModelInput(text=b"Lovely dress, fits perfectly.", image=b"")])
    finally:
        await model.close()
    assert len(outputs) == 1
    assert len(outputs[0].sentiment) == len(info.sentiment_labels)
    status, _ = http(server, "GET", f"/v2/models/{MODEL}/config")
    assert status == 200


def test_with_the_key_unload_and_load_work_over_http_and_grpc(server: TritonServer, grpc: Any) -> None:
    grpc_headers = server.admin_headers("grpc")
    try:
        # HTTP unload, gRPC load.
        status, text = http(server, "POST", f"/v2/repository/models/{MODEL}/unload", **server.admin_headers())
        assert status == 200, text
        wait_until(lambda: not model_ready(server), "the model going unready after an HTTP unload")
        grpc.load_model(MODEL, headers=grpc_headers)
        assert model_ready(server)
        # gRPC unload, HTTP load.
        grpc.unload_model(MODEL, headers=grpc_headers)
        wait_until(lambda: not model_ready(server), "the model going unready after a gRPC unload")
        status, text = http(server, "POST", f"/v2/repository/models/{MODEL}/load", **server.admin_headers())
        assert status == 200, text
        assert model_ready(server)
    finally:
        # Leave the model loaded whatever failed above.
        if not model_ready(server):
            http(server, "POST", f"/v2/repository/models/{MODEL}/load", **server.admin_headers())
    assert grpc.is_model_ready(MODEL)
