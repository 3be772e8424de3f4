"""Request handling of the served model (the code Triton's model.py calls), on the committed version."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from fusion.errors import EmptyInput, ImageTooLarge, InvalidImage, InvalidText
from fusion.preprocess import InputLimits
from fusion.serving import FusionService, config_parameters, limits_from_parameters

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "ecom_fusion"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service() -> FusionService:
    return FusionService(MODEL_DIR / "1", "cpu", InputLimits(max_image_pixels=100 * 100))


def model_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ecom_fusion_model", MODEL_DIR / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_requests_fail_alone_and_the_rest_of_the_batch_succeeds(service: FusionService) -> None:
    image = png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    requests = [
        [(b"Great fit, love it", b"")],
        [(b"", b"")],
        [(b"", image)],
        [(b"\xff\xfe", b"")],
        [(b"", image[:40])],
        [(b"", png(np.zeros((200, 200), dtype=np.uint8)))],  # over this service's 100x100 pixel limit
        [(b"Nice top", image), (b"Soft", b"")],  # one request with two rows
        [(b"ok", b""), (b"", b"")],  # one bad row fails its whole request, named by row
    ]
    outcomes = service.run(requests)
    errors = [type(o.error) if o.error else None for o in outcomes]
    assert errors == [None, EmptyInput, None, InvalidText, InvalidImage, ImageTooLarge, None, EmptyInput]
    assert "row 1" in str(outcomes[7].error)
    for o in (outcomes[0], outcomes[2], outcomes[6]):
        assert o.outputs is not None
        rows = o.outputs["SENTIMENT"].shape[0]
        assert o.outputs["CATEGORY"].shape == (rows, service.num_categories)
        assert o.outputs["EMBEDDING"].shape == (rows, service.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(o.outputs["EMBEDDING"], axis=1), 1.0, atol=1e-5)
    assert outcomes[6].outputs is not None and outcomes[6].outputs["SENTIMENT"].shape == (2, 3)


def test_results_do_not_depend_on_the_batch_they_arrive_in(service: FusionService) -> None:
    alone = service.run([[(b"Too small, returned it", b"")]])[0].outputs
    mixed = service.run(
        [
            [(b"", b"")],
            [(b"A much longer review text that pads the batch " * 5, b"")],
            [(b"Too small, returned it", b"")],
        ]
    )[2].outputs
    assert alone is not None and mixed is not None
    for key in alone:
        np.testing.assert_allclose(alone[key], mixed[key], atol=1e-5)


def test_limits_come_from_the_committed_config_parameters() -> None:
    text = (MODEL_DIR / "config.pbtxt").read_text()
    params = {}
    for line in text.splitlines():
        if line.startswith("parameters"):
            key = line.split('key: "')[1].split('"')[0]
            value = line.split('string_value: "')[1].rsplit('" }', 1)[0].replace('\\"', '"')
            params[key] = {"string_value": value}
    limits = limits_from_parameters(config_parameters({"parameters": params}))
    assert limits == InputLimits()
    assert json.loads(params["category_labels"]["string_value"])[0] == "tshirt_top"


def test_model_py_imports_without_triton_and_picks_the_device() -> None:
    module = model_py()
    assert module.pick_device("CPU", "0") == "cpu"
    assert module.pick_device("GPU", "1") in ("cpu", "cuda:1")  # cuda only where CUDA exists
    rows = module.rows_of(np.array([[b"hi"], [b""]], dtype=object), np.array([[b""], [b"x"]], dtype=object))
    assert rows == [(b"hi", b""), (b"", b"x")]
