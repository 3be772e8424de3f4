"""The model's Triton configs: every instance runs real requests before it is ready (model_warmup), and
CATEGORY names its label file, so `/v2/health/ready` means warm and a classification request gets labels.

What Triton does with the configs (a failing warm-up sample fails the load; the committed samples load
and run) was checked against the embedded Triton: see the commit that added the warm-up.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image

from fusion.preprocess import InputLimits, validate_image
from fusion.repository import LABEL_FILE, WARMUP_SAMPLES, warmup_files
from fusion.taxonomy import LEAF_NAMES

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "ecom_fusion"
CONFIGS = [MODEL_DIR / "config.pbtxt", MODEL_DIR / "configs" / "gpu.pbtxt"]


def string_elements(data: bytes) -> list[bytes]:
    """Triton's serialisation of a TYPE_STRING tensor: each element a 4-byte little-endian length, then
    its bytes."""
    elements, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "little")
        elements.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    assert at == len(data), "the lengths do not add up to the file"
    return elements


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_warmup_sample_sends_both_inputs_from_committed_files(config: Path) -> None:
    text = config.read_text()
    warmup = text[text.index("model_warmup [") :]
    samples = re.findall(r'name: "(\w+)"\n    batch_size: 1\n((?:    inputs .*\n)+)', warmup)
    assert [name for name, _ in samples] == list(WARMUP_SAMPLES)
    for _, inputs in samples:
        files = dict(
            re.findall(
                r'key: "(\w+)" value: \{ data_type: TYPE_STRING dims: \[ 1 \] input_data_file: "(\w+)"',
                inputs,
            )
        )
        assert set(files) == {"TEXT", "IMAGE"}
        for name in files.values():
            assert (MODEL_DIR / "warmup" / name).read_bytes() == warmup_files()[name]


def test_the_warmup_rows_are_ones_the_model_answers() -> None:
    """A sample the model rejects would fail the model's load: a text, and a decodable image."""
    files = {name: string_elements((MODEL_DIR / "warmup" / name).read_bytes()) for name in warmup_files()}
    [text], [empty], [image] = files["text"], files["empty"], files["image"]
    assert text.decode("utf-8").strip() and empty == b""
    validate_image(image, InputLimits())
    assert Image.open(io.BytesIO(image)).size == (32, 32)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_category_names_its_label_file(config: Path) -> None:
    assert re.search(rf'name: "CATEGORY".*label_filename: "{LABEL_FILE}"', config.read_text())
    assert (MODEL_DIR / LABEL_FILE).read_text().splitlines() == list(LEAF_NAMES)


def test_the_serialisation_reader_is_exact() -> None:
    assert string_elements(b"\x02\x00\x00\x00hi\x00\x00\x00\x00") == [b"hi", b""]
    with pytest.raises(AssertionError):
        string_elements(b"\x05\x00\x00\x00hi")
