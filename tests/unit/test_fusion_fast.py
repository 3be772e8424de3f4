"""The fast CPU runtimes give the torch network's outputs, and the repository serves every version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion.fast import RUNTIMES, graph_folder, make_predictor
from fusion.network import Predictor, load_tuned
from fusion.preprocess import prepare_image
from fusion.repository import render_config, served_versions, version_names, version_policy, write_repository
from fusion.serving import FusionService

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "ecom_fusion"
TEXTS = [
    "Love this dress, it fits perfectly and the fabric is soft.",
    "Runs small. The zipper broke after one wash; returning it.",
    "ok",
    "The sweater is itchy but warm enough for winter evenings at home with a book and tea.",
]


def _images() -> list[np.ndarray]:
    from fusion.data import load_fashion_mnist

    fm = load_fashion_mnist("test")
    return [prepare_image(fm.images[i], 64) for i in range(16)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "precision", "tolerance"),
    [("openvino", "f32", 1e-3), ("openvino", "", 0.1), ("onnxruntime-int8", "", 0.1)],
)
def test_fast_runtime_matches_torch(runtime: str, precision: str, tolerance: float, tmp_path: Path) -> None:
    pytest.importorskip("openvino" if runtime == "openvino" else "onnxruntime")
    tokenizer, net = load_tuned(MODEL_DIR / "1", "cpu")
    reference = Predictor(tokenizer, net, "cpu")
    fast = make_predictor(tokenizer, net, "cpu", runtime, None, 1, precision)
    assert type(fast) is not Predictor
    images = _images()
    rows_t = [*TEXTS, None, None]
    rows_i = [None, None, images[0], None, images[1], images[2]]
    want = reference.predict(rows_t, rows_i)
    got = fast.predict(rows_t, rows_i)
    for key in ("sentiment", "category", "embedding"):
        assert got[key].shape == want[key].shape
        assert np.abs(got[key] - want[key]).max() < tolerance, key
    assert (got["category"].argmax(1) == want["category"].argmax(1)).mean() >= 0.8


def test_gpu_and_torch_keep_the_torch_predictor() -> None:
    tokenizer, net = load_tuned(MODEL_DIR / "1", "cpu")
    assert type(make_predictor(tokenizer, net, "cpu", "torch")) is Predictor
    with pytest.raises(ValueError, match="unknown runtime"):
        make_predictor(tokenizer, net, "cpu", "tensorrt")
    assert RUNTIMES[0] == "torch"


def test_missing_runtime_library_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion.serving

    def missing(*args: object, **kwargs: object) -> Predictor:
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(fusion.serving, "make_predictor", missing)
    service = FusionService(MODEL_DIR / "1", "cpu", runtime="openvino")
    assert service.runtime == "torch"
    outcome = service.run([[(b"Great fit", b"")]])[0]
    assert outcome.outputs is not None


def test_graph_cache_is_keyed_by_weights_and_runtime() -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    a = graph_folder(MODEL_DIR / "1", "openvino")
    b = graph_folder(MODEL_DIR / "1", "onnxruntime-int8")
    assert a != b and a.parent == b.parent


def test_every_version_with_weights_is_served(tmp_path: Path) -> None:
    for version in ("1", "2", "3"):
        (tmp_path / version).mkdir()
    (tmp_path / "1" / "fusion.safetensors").write_bytes(b"x")
    (tmp_path / "2" / "fusion.safetensors").write_bytes(b"x")
    (tmp_path / "configs").mkdir()
    assert served_versions(tmp_path) == [1, 2]  # 3 holds no weights yet (a training in progress)
    assert version_policy([1, 2]) == "version_policy: { specific: { versions: [ 1, 2 ] } }"
    assert version_policy([1]) == "version_policy: { specific: { versions: [ 1 ] } }"
    for version in ("1", "2"):
        (tmp_path / version / "metrics.json").write_text(f'{{"run": {{"version_name": "v{version}+abc"}}}}')
    assert version_names(tmp_path, [1, 2]) == {1: "v1+abc", 2: "v2+abc"}
    write_repository(tmp_path, version_name="v2+abc", embedding_dim=128)
    config = (tmp_path / "config.pbtxt").read_text()
    assert 'key: "model_version_name@1" value { string_value: "v1+abc" }' in config
    assert 'key: "model_version_name" value { string_value: "v2+abc" }' in config


def test_committed_configs_serve_the_committed_versions_and_pick_the_runtime() -> None:
    versions = served_versions(MODEL_DIR)
    assert 1 in versions
    cpu = (MODEL_DIR / "config.pbtxt").read_text()
    gpu = (MODEL_DIR / "configs" / "gpu.pbtxt").read_text()
    for text in (cpu, gpu):
        assert version_policy(versions) in text
    assert 'key: "runtime" value { string_value: "openvino" }' in cpu
    assert 'key: "runtime" value { string_value: "torch" }' in gpu
    for version in versions:
        assert (MODEL_DIR / str(version) / "model.py").exists()


def test_render_config_names_the_runtime() -> None:
    from fusion.preprocess import InputLimits
    from fusion.repository import CPU_SERVING

    text = render_config(
        version_name="x",
        embedding_dim=128,
        kind="cpu",
        limits=InputLimits(),
        serving=CPU_SERVING,
        versions=[1, 2],
    )
    assert f'string_value: "{CPU_SERVING.runtime}"' in text
    assert "versions: [ 1, 2 ]" in text
