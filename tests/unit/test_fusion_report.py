"""The model card of a later version shows the version before it side by side and its own targets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fusion.report import TARGETS_BY_VERSION, previous_metrics, render_card, summary_line

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "ecom_fusion"


def test_card_of_version_2_compares_with_version_1_and_says_by_how_much_a_target_is_missed(
    tmp_path: Path,
) -> None:
    v1 = json.loads((MODEL_DIR / "1" / "metrics.json").read_text())
    v2 = copy.deepcopy(v1)
    v2["run"]["model_version"] = "2"
    v2["run"]["version_name"] = "ecom_fusion-2.0+test"
    v2["model"]["reviews_test"]["sentiment_macro_f1"] = 0.70
    v2["model"]["fmnist_test"]["accuracy"] = 0.95
    for version, metrics in (("1", v1), ("2", v2)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "metrics.json").write_text(json.dumps(metrics))
    previous = previous_metrics(tmp_path / "2")
    assert previous == v1
    assert previous_metrics(tmp_path / "1") is None

    card = render_card(v2, [], v2["details"], previous)
    assert "## Compared with the previous version" in card
    assert "version 1 (" in card and "version 2 (ecom_fusion-2.0+test)" in card
    assert "+0.025" in card  # Fashion-MNIST 0.925 -> 0.95
    goal = TARGETS_BY_VERSION["2"]["sentiment_macro_f1"]
    assert f"**missed** by {goal - 0.70:.3f}" in card
    tfidf = v1["baselines"]["tfidf_logreg"]["sentiment_macro_f1"]
    assert f"{0.70 - tfidf:+.3f}" in card  # the margin over TF-IDF + LR of the same run
    assert "What was tried for this version" in card
    assert f"target {goal}" in summary_line(v2)


def test_card_of_version_1_keeps_its_own_targets() -> None:
    v1 = json.loads((MODEL_DIR / "1" / "metrics.json").read_text())
    card = render_card(v1, [], v1["details"])
    assert "| 0.750 |" in card
    assert "Compared with the previous version" not in card
