"""The fixes the benchmark led to (docs/benchmarks.md), checked for correctness, not for speed."""

from __future__ import annotations

import random

import pytest
import torch

from fusion.network import NetConfig, Predictor, build_net, length_chunks


@pytest.mark.parametrize("slack", [None, 0.0, 0.25, 1.0])
def test_length_chunks_cover_every_row_once_in_bounded_runs(slack: float | None) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(3, 128) for _ in range(200)]
    chunks = length_chunks(lengths, 16, slack)
    assert sorted(i for c in chunks for i in c) == list(range(200))
    assert all(1 <= len(c) <= 16 for c in chunks)
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(flat)  # shortest first, runs of neighbours
    if slack is None:
        assert [len(c) for c in chunks[:-1]] == [16] * (len(chunks) - 1)
    else:
        for c in chunks:
            padded = len(c) * max(lengths[i] for i in c)
            assert len(c) == 1 or padded <= (1 + slack) * sum(lengths[i] for i in c) + 1e-9


def test_equal_lengths_fill_whole_runs() -> None:
    assert length_chunks([10] * 10, 4, 0.0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert length_chunks([], 4, 0.25) == []


def test_text_features_do_not_depend_on_how_rows_are_grouped() -> None:
    """Features of texts of very different lengths, computed in one call (grouped by length) equal the
    features of each text alone."""
    torch.manual_seed(0)
    tokenizer, net = build_net(NetConfig(wide_buckets=1 << 10))
    with torch.no_grad():
        net.wide.weight.normal_(0, 0.5)
    predictor = Predictor(tokenizer, net.eval())
    texts = [
        "ok",
        "Runs small.",
        "Love this dress, fits perfectly and the colour is exactly as in the photos. " * 3,
        "Too small. Returned it",
        "The fabric is thin and see-through; " * 12,
        "Great",
    ]
    together, wide_together = predictor.text_features(texts)
    for i, text in enumerate(texts):
        alone, wide_alone = predictor.text_features([text])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(wide_together[i : i + 1], wide_alone, atol=1e-6, rtol=1e-5)
