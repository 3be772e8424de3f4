"""The fusion network: towers against the reference encoders, missing modalities, save/load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fusion.network import (
    FusionNet,
    NetConfig,
    Predictor,
    build_net,
    load_text_encoder,
    load_tuned,
    save_tuned,
)
from fusion.preprocess import prepare_image
from fusion.taxonomy import NUM_LEAVES

TEXTS = ["Love this dress, fits perfectly.", "Too small. Returned it", "ok"]


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[Any, FusionNet]]:
    torch.manual_seed(0)
    tokenizer, net = build_net(NetConfig(wide_buckets=1 << 10))
    # Make the randomly initialised parts non-trivial so that the checks below can fail.
    with torch.no_grad():
        net.wide.weight.normal_(0, 0.5)
    yield tokenizer, net.eval()


def images(n: int, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [prepare_image(rng.integers(0, 255, (28, 28), dtype=np.uint8), size) for _ in range(n)]


def test_text_tower_equals_the_reference_encoder(built: tuple[Any, FusionNet]) -> None:
    tokenizer, net = built
    _, reference = load_text_encoder()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = net.text.top(net.text.bottom(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"])
        hidden = reference.eval()(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * m).sum(1) / m.sum(1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_text(built: tuple[Any, FusionNet]) -> None:
    tokenizer, net = built
    predictor = Predictor(tokenizer, net)
    alone, _ = predictor.text_features(TEXTS[2:])
    padded, _ = predictor.text_features(TEXTS)
    torch.testing.assert_close(padded[2:], alone, atol=1e-5, rtol=1e-4)


def test_missing_modalities_in_one_batch(built: tuple[Any, FusionNet]) -> None:
    tokenizer, net = built
    predictor = Predictor(tokenizer, net)
    ims = images(2)
    mixed = predictor.predict([TEXTS[0], None, TEXTS[1]], [None, ims[0], ims[1]])
    text_only = predictor.predict([TEXTS[0]], [None])
    image_only = predictor.predict([None], [ims[0]])
    both = predictor.predict([TEXTS[1]], [ims[1]])
    for key in ("sentiment", "category", "embedding"):
        np.testing.assert_allclose(mixed[key][0], text_only[key][0], atol=1e-5)
        np.testing.assert_allclose(mixed[key][1], image_only[key][0], atol=1e-5)
        np.testing.assert_allclose(mixed[key][2], both[key][0], atol=1e-5)
    assert mixed["sentiment"].shape == (3, 3) and mixed["category"].shape == (3, NUM_LEAVES)
    np.testing.assert_allclose(mixed["sentiment"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mixed["category"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mixed["embedding"], axis=1), 1.0, atol=1e-5)
    # Both modalities really contribute: the fused row differs from either one alone.
    with_image_only = predictor.predict([None], [ims[1]])
    assert not np.allclose(both["embedding"], with_image_only["embedding"], atol=1e-3)


def test_one_modality_passes_through_the_gate_unchanged(built: tuple[Any, FusionNet]) -> None:
    _, net = built
    feat = torch.randn(4, net.text.dim)
    with torch.no_grad():
        alone = net.fuse(feat, None)
        # Image features present but flagged absent are ignored entirely.
        masked = net.fuse_masked(
            feat, torch.ones(4), torch.randn(4, net.image.dim) * 100, torch.zeros(4), None
        )
    torch.testing.assert_close(alone["embedding"], masked["embedding"])


def test_only_the_fine_tuned_tensors_are_saved_and_they_reload(
    built: tuple[Any, FusionNet], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    tokenizer, net = built
    save_tuned(net, tmp_path)
    saved = load_file(str(tmp_path / "fusion.safetensors"))
    assert not any(k.startswith(FusionNet.FROZEN_PREFIXES) for k in saved)
    assert any(k.startswith("text.tuned_layers.") for k in saved)
    assert any(k.startswith("image.tuned_blocks.") for k in saved)
    tok2, reloaded = load_tuned(tmp_path)
    a = Predictor(tokenizer, net).predict([TEXTS[0], None], [None, images(1)[0]])
    b = Predictor(tok2, reloaded).predict([TEXTS[0], None], [None, images(1)[0]])
    for key in a:  # fp16 storage of the big tensors: close, not equal
        np.testing.assert_allclose(a[key], b[key], atol=2e-2)
