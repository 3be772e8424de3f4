"""The committed `ecom_fusion` in the real tritonserver: the contract, every committed version served
side by side, agreement of each with the training-side code on real held-out examples (through the
runtime its config selects), and per-request errors inside one concurrent batch."""

from __future__ import annotations

import io
import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fusion.data import load_fashion_mnist, load_reviews, review_splits
from fusion.fast import make_predictor
from fusion.network import load_tuned
from fusion.preprocess import InputLimits, prepare_image
from fusion.repository import served_versions
from fusion.serving import config_parameters
from fusion.taxonomy import LEAF_NAMES

try:  # the embedded servers' package moved; either location works
    from tooling.embedded import TritonServer
except ImportError:  # pragma: no cover
    from streams.embedded import TritonServer  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

MODEL = "ecom_fusion"
MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / MODEL
VERSIONS = served_versions(MODEL_DIR)
VERSION_DIR = MODEL_DIR / "1"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def held_out() -> dict[str, Any]:
    """A handful of real test-split examples: reviews (text) and Fashion-MNIST test images."""
    reviews = load_reviews()
    test_rows = review_splits(reviews)["test"][:6]
    fm = load_fashion_mnist("test")
    picks = [0, 1, 2, 3, 4, 5]
    return {
        "texts": [reviews.texts[i] for i in test_rows],
        "images": [fm.images[i] for i in picks],
    }


def client(server: TritonServer) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_url)


def inputs(text: bytes, image: bytes) -> list[Any]:
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[text]], dtype=object))
    i = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    i.set_data_from_numpy(np.array([[image]], dtype=object))
    return [t, i]


def send_concurrently(server: TritonServer, rows: list[tuple[bytes, bytes]], version: str = "") -> list[Any]:
    """All requests in flight at once (so the dynamic batcher groups them); results in request order.
    `version` names the model version ("" = the server's choice, the latest)."""
    c = client(server)
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for n, (text, image) in enumerate(rows):
        c.async_infer(
            MODEL,
            inputs(text, image),
            callback=lambda result, error, n=n: done.put((n, result, error)),
            model_version=version,
        )
    results: list[Any] = [None] * len(rows)
    for _ in rows:
        n, result, error = done.get(timeout=120)
        results[n] = error if error is not None else result
    c.close()
    return results


def test_config_publishes_the_contract(triton: TritonServer) -> None:
    config = client(triton).get_model_config(MODEL, as_json=True)["config"]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    labels = json.loads(params["category_labels"])
    assert labels == list(LEAF_NAMES)
    assert labels == (VERSION_DIR.parent / "category_labels.txt").read_text().splitlines()
    outputs = {o["name"]: o for o in config["output"]}
    assert [int(d) for d in outputs["CATEGORY"]["dims"]] == [len(labels)]
    assert [int(d) for d in outputs["SENTIMENT"]["dims"]] == [3]
    assert [int(d) for d in outputs["EMBEDDING"]["dims"]] == [int(params["embedding_dim"])]
    assert params["model_version_name"]
    assert {i["name"]: i["data_type"] for i in config["input"]} == {
        "TEXT": "TYPE_STRING",
        "IMAGE": "TYPE_STRING",
    }


def test_every_committed_version_is_served_and_the_latest_is_the_default(triton: TritonServer) -> None:
    c = client(triton)
    assert VERSIONS, "no version folder with weights"
    for version in VERSIONS:
        assert c.is_model_ready(MODEL, str(version)), f"version {version} is not ready"
    index = c.get_model_repository_index(headers=triton.admin_headers("grpc"), as_json=True)
    ready = {
        m["version"] for m in index.get("models", []) if m["name"] == MODEL and m.get("state") == "READY"
    }
    assert ready == {str(v) for v in VERSIONS}
    rows = [(b"Lovely soft sweater, fits well", b"")]
    default = send_concurrently(triton, rows)[0]
    latest = send_concurrently(triton, rows, str(VERSIONS[-1]))[0]
    assert not isinstance(default, Exception) and not isinstance(latest, Exception)
    assert default.get_response().model_version == str(VERSIONS[-1])
    np.testing.assert_allclose(default.as_numpy("CATEGORY"), latest.as_numpy("CATEGORY"), atol=1e-6)


def _runtime_of(version: int) -> str:
    """The runtime the served version runs: its model.py reads the config's `runtime` (version 1's
    model.py predates the parameter and always runs torch)."""
    if "runtime" not in (MODEL_DIR / str(version) / "model.py").read_text():
        return "torch"
    text = (MODEL_DIR / "config.pbtxt").read_text()
    found = [line for line in text.splitlines() if 'key: "runtime"' in line]
    return found[0].split('string_value: "')[1].split('"')[0] if found else "torch"


@pytest.mark.parametrize("version", VERSIONS)
def test_predictions_match_the_training_side_code(
    triton: TritonServer, held_out: dict[str, Any], version: int
) -> None:
    texts, images = held_out["texts"], held_out["images"]
    rows: list[tuple[bytes, bytes]] = [(t.encode(), b"") for t in texts]
    rows += [(b"", png(img)) for img in images]
    rows += [(t.encode(), png(img)) for t, img in zip(texts[:3], images[:3], strict=True)]
    results = send_concurrently(triton, rows, str(version))

    version_dir = MODEL_DIR / str(version)
    runtime = _runtime_of(version)
    config = client(triton).get_model_config(MODEL, as_json=True)["config"]
    threads = int(config_parameters(config).get("torch_threads", "1") or 1)
    tokenizer, net = load_tuned(version_dir)
    predictor = make_predictor(tokenizer, net, "cpu", runtime, version_dir, threads)
    # torch in both places: the same numbers. A fast runtime may run at reduced precision (bf16 on
    # a CPU with AMX), whose rounding depends on how the dynamic batcher grouped the rows.
    atol = 1e-4 if runtime == "torch" else 0.05
    size = net.config.image_size
    expected = predictor.predict(
        [*texts, *([None] * len(images)), *texts[:3]],
        [
            *([None] * len(texts)),
            *(prepare_image(i, size) for i in images),
            *(prepare_image(i, size) for i in images[:3]),
        ],
    )
    for n, result in enumerate(results):
        assert not isinstance(result, Exception), f"request {n} failed: {result}"
        for name, key in (("SENTIMENT", "sentiment"), ("CATEGORY", "category"), ("EMBEDDING", "embedding")):
            got = result.as_numpy(name)[0]
            np.testing.assert_allclose(got, expected[key][n], atol=atol, err_msg=f"request {n} {name}")
        assert np.linalg.norm(result.as_numpy("EMBEDDING")[0]) == pytest.approx(1.0, abs=1e-4)


def bomb_png(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def test_bad_requests_fail_alone_inside_a_concurrent_batch(
    triton: TritonServer, held_out: dict[str, Any]
) -> None:
    good_image = png(held_out["images"][0])
    limits = InputLimits()
    bad = {
        "both empty": (b"", b""),
        "not utf-8": (b"caf\xe9 \xff", b""),
        "corrupt image": (b"", b"\x89PNG\r\n\x1a\nthis is not a png"),
        "truncated image": (b"nice", good_image[: len(good_image) // 2]),
        "decompression bomb": (b"", bomb_png(20_000, 20_000)),
        "over the byte limit": (b"", b"\xff\xd8" + b"\0" * limits.max_image_bytes),
    }
    good = [(t.encode(), b"") for t in held_out["texts"]] + [(b"", png(i)) for i in held_out["images"]]
    rows: list[tuple[bytes, bytes]] = []
    kinds: list[str] = []
    bad_items = list(bad.items())
    for n, row in enumerate(good):  # interleave good and bad requests
        rows.append(row)
        kinds.append("good")
        if n < len(bad_items):
            rows.append(bad_items[n][1])
            kinds.append(bad_items[n][0])
    results = send_concurrently(triton, rows)
    for kind, result in zip(kinds, results, strict=True):
        if kind == "good":
            assert not isinstance(result, Exception), f"a good request failed: {result}"
            assert result.as_numpy("SENTIMENT").shape == (1, 3)
        else:
            assert isinstance(result, Exception), f"{kind} was accepted"
            message = str(result)
            assert any(
                word in message for word in ("EmptyInput", "InvalidText", "InvalidImage", "ImageTooLarge")
            ), f"{kind}: {message}"
    # The server is still healthy after all of that.
    assert client(triton).is_model_ready(MODEL)
