"""Metrics as an outsider computes them, and the validation-only bias tuning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fusion.metrics import accuracy, confusion, macro_f1, tune_class_bias


def test_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    assert macro_f1(y, p, 3) == pytest.approx(f1_score(y, p, average="macro"))


def test_confusion_and_accuracy() -> None:
    m = confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])) == 0.75


def test_bias_tuning_recovers_a_shifted_minority_class() -> None:
    rng = np.random.default_rng(1)
    y = rng.choice(3, size=3000, p=[0.1, 0.15, 0.75])
    logits = rng.normal(size=(3000, 3))
    logits[np.arange(3000), y] += 2.0
    logits[:, 1] -= 1.5  # the model under-predicts the middle class
    before = macro_f1(y, logits.argmax(1), 3)
    bias, after = tune_class_bias(logits, y)
    assert after > before + 0.05
    assert bias[1] > 0.5 and bias[2] == 0.0
