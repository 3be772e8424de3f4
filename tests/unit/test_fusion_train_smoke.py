"""The whole training pipeline on a few hundred real examples: every stage runs and writes its outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fusion import train
from fusion.preprocess import prepare_image
from fusion.serving import FusionService
from fusion.taxonomy import LEAF_NAMES


@pytest.mark.slow
def test_smoke_run_trains_exports_and_reports(tmp_path: Path) -> None:
    out, repo = tmp_path / "run", tmp_path / "repo"
    assert (
        train.main(["--smoke", "--output", str(out), "--export", str(repo), "--version-name", "smoke"]) == 0
    )

    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 1
    assert {"train_loss", "val_sentiment_macro_f1", "val_fmnist_accuracy", "seconds"} <= set(
        history["epochs"][0]
    )
    metrics = json.loads((repo / "1" / "metrics.json").read_text())
    model = metrics["model"]
    assert 0.0 <= model["reviews_test"]["sentiment_macro_f1"] <= 1.0
    assert 0.0 <= model["fmnist_test"]["accuracy"] <= 1.0
    assert set(model["pairs_test"]["leaf_accuracy"]) == {"both", "text_only", "image_only"}
    assert {"tfidf_logreg", "image_linear_probe"} <= set(metrics["baselines"])
    assert metrics["run"]["smoke"] is True
    card = (repo / "1" / "model_card.md").read_text()
    assert "SMOKE RUN" in card
    for plot in (
        "learning_curves.png",
        "confusion_sentiment.png",
        "confusion_fmnist.png",
        "confusion_department.png",
    ):
        assert (repo / "1" / plot).stat().st_size > 1000
    assert (repo / "category_labels.txt").read_text().splitlines() == list(LEAF_NAMES)
    assert 'string_value: "smoke+' in (repo / "config.pbtxt").read_text()

    # The exported version serves through the same code as Triton's model.py.
    service = FusionService(repo / "1")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    outcome = service.predictor.predict(["a lovely dress"], [prepare_image(grey, service.image_size)])
    assert outcome["category"].shape == (1, len(LEAF_NAMES))


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped mid-epoch and resumed from its last checkpoint ends with the weights of a run
    that was never stopped; the export goes to the numbered version folder asked for."""
    common = ["--smoke", "--epochs", "2", "--checkpoint-every", "1", "--skip-baselines"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train.main([*common, "--output", str(whole), "--export", str(whole / "repo")]) == 0

    validate = train.Trainer.validate
    calls = {"n": 0}

    def stop_at_first_validation(self: train.Trainer) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # after the last mid-epoch checkpoint of epoch 1
        return validate(self)

    monkeypatch.setattr(train.Trainer, "validate", stop_at_first_validation)
    args = [*common, "--output", str(cut), "--export", str(cut / "repo"), "--model-version", "2"]
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    assert (cut / "checkpoints" / "last.pt").exists()
    early = tmp_path / "early"
    shutil.copytree(cut, early)
    assert train.main([*args, "--resume"]) == 0

    # The same checkpoint finished early instead: no more training, the partial epoch is validated.
    early_args = [*common, "--output", str(early), "--export", str(early / "repo"), "--model-version", "2"]
    assert train.main([*early_args, "--resume", "--finish-early"]) == 0
    epochs = json.loads((early / "history.json").read_text())["epochs"]
    assert [round(e["epoch"], 2) for e in epochs] == [0.67]  # 2 of the 3 steps of epoch 1
    assert (early / "repo" / "2" / "fusion.safetensors").exists()

    assert not (cut / "repo" / "1").exists()
    first = json.loads((whole / "repo" / "1" / "metrics.json").read_text())
    resumed = json.loads((cut / "repo" / "2" / "metrics.json").read_text())
    digest = first["run"]["version_name"].split("+")[1]
    assert resumed["run"]["version_name"] == f"ecom_fusion-2.0+{digest}"
    assert resumed["model"] == first["model"]
