"""Metrics on the taxonomy, as an outsider computes them from the served outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fusion.taxonomy import leaf_department_indices, leaf_to_department_matrix, leaf_to_fmnist_class

Array = npt.NDArray[Any]


def accuracy(y_true: Array, y_pred: Array) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def confusion(y_true: Array, y_pred: Array, n: int) -> npt.NDArray[np.int64]:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def macro_f1(y_true: Array, y_pred: Array, n: int) -> float:
    m = confusion(y_true, y_pred, n)
    scores = []
    for k in range(n):
        tp = m[k, k]
        denom = m[k, :].sum() + m[:, k].sum()
        scores.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def fmnist_predictions(leaf_probs: Array) -> npt.NDArray[np.int64]:
    """Argmax over ALL leaves mapped to a Fashion-MNIST class; -1 (always wrong) for other leaves."""
    return np.asarray(leaf_to_fmnist_class()[np.argmax(leaf_probs, axis=1)], dtype=np.int64)


def department_predictions(leaf_probs: Array) -> npt.NDArray[np.int64]:
    """Argmax of leaf probabilities summed per department."""
    summed = np.asarray(leaf_probs, dtype=np.float32) @ leaf_to_department_matrix()
    return np.asarray(np.argmax(summed, axis=1), dtype=np.int64)


def leaf_to_department(leaf: Array) -> npt.NDArray[np.int64]:
    return np.asarray(leaf_department_indices()[np.asarray(leaf, dtype=np.int64)], dtype=np.int64)


def tune_class_bias(
    log_probs: Array, y_true: Array, grid: Array | None = None
) -> tuple[npt.NDArray[np.float32], float]:
    """Offsets for classes 0 and 1 (class 2 fixed at 0) maximising macro-F1 of argmax(log_probs + b).

    Meant for a validation split carved out of the training data, never the test split.
    """
    if grid is None:
        grid = np.round(np.arange(-1.5, 1.51, 0.05), 3)
    best = (np.zeros(3, dtype=np.float32), macro_f1(y_true, np.argmax(log_probs, 1), 3))
    for b0 in grid:
        for b1 in grid:
            bias = np.array([b0, b1, 0.0], dtype=np.float32)
            score = macro_f1(y_true, np.argmax(log_probs + bias, 1), 3)
            # Prefer the smaller adjustment on ties (less over-fitting to the validation split).
            if score > best[1] + 1e-9 or (
                abs(score - best[1]) <= 1e-9 and np.abs(bias).sum() < np.abs(best[0]).sum()
            ):
                best = (bias, score)
    return best
