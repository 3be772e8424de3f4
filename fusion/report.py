"""The model card: markdown + plots (learning curves, confusion matrices), held-out data only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusion.taxonomy import DEPARTMENTS, FMNIST_CLASSES, SENTIMENT_LABELS

# Targets per model version (version 1 was held to 0.75 sentiment macro-F1; version 2 to 0.72 and at
# least SENTIMENT_MARGIN above TF-IDF + LR of the same run).
TARGETS_BY_VERSION = {
    "1": {"sentiment_macro_f1": 0.75, "fmnist_accuracy": 0.93, "department_accuracy": 0.90},
    "2": {"sentiment_macro_f1": 0.72, "fmnist_accuracy": 0.93, "department_accuracy": 0.90},
}
SENTIMENT_MARGIN = {"2": 0.04}
TARGETS = TARGETS_BY_VERSION["2"]


def targets_of(run: dict[str, Any]) -> dict[str, float]:
    return TARGETS_BY_VERSION.get(str(run.get("model_version", "1")), TARGETS)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_line(metrics: dict[str, Any]) -> str:
    m = metrics["model"]
    t = targets_of(metrics["run"])
    tfidf = metrics.get("baselines", {}).get("tfidf_logreg", {}).get("sentiment_macro_f1")
    baseline = f", TF-IDF + LR {tfidf:.3f}" if isinstance(tfidf, float) else ""
    return (
        f"test: sentiment macro-F1 {m['reviews_test']['sentiment_macro_f1']:.3f}"
        f" (target {t['sentiment_macro_f1']}{baseline}), "
        f"department accuracy {m['reviews_test']['department_accuracy']:.3f}"
        f" (target {t['department_accuracy']}), "
        f"Fashion-MNIST accuracy {m['fmnist_test']['accuracy']:.3f} (target {t['fmnist_accuracy']})"
    )


def comparison_rows(current: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    """A markdown table of the previous version beside this one, same test splits."""

    def figures(m: dict[str, Any]) -> list[tuple[str, Any]]:
        model, base = m["model"], m.get("baselines", {})
        return [
            ("review sentiment macro-F1", model["reviews_test"]["sentiment_macro_f1"]),
            (
                "TF-IDF + LR sentiment macro-F1 (same run)",
                base.get("tfidf_logreg", {}).get("sentiment_macro_f1"),
            ),
            ("department from review text, accuracy", model["reviews_test"]["department_accuracy"]),
            ("Fashion-MNIST from the image alone, accuracy", model["fmnist_test"]["accuracy"]),
            ("review sentiment accuracy", model["reviews_test"]["sentiment_accuracy"]),
            ("leaf accuracy from review text", model["reviews_test"]["leaf_accuracy"]),
            ("paired test set, leaf accuracy (both)", model["pairs_test"]["leaf_accuracy"]["both"]),
            ("training wall time, min", m["run"]["seconds"]["wall_total"] / 60),
        ]

    old_run, new_run = previous["run"], current["run"]
    rows = [
        _row(
            "test split",
            f"version {old_run.get('model_version', '1')} ({old_run['version_name']})",
            f"version {new_run.get('model_version', '?')} ({new_run['version_name']})",
            "change",
        ),
        _row("---", "---", "---", "---"),
    ]
    for (label, old), (_, new) in zip(figures(previous), figures(current), strict=True):
        change = f"{new - old:+.3f}" if isinstance(old, float) and isinstance(new, float) else "-"
        rows.append(
            _row(label, _fmt(old) if old is not None else "-", _fmt(new) if new is not None else "-", change)
        )
    return rows


def _plot_history(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (
        ("train_loss", "train loss (total)"),
        ("val_sentiment_loss", "val sentiment loss"),
        ("val_text_category_loss", "val category loss (text)"),
        ("val_image_category_loss", "val category loss (image)"),
    ):
        axes[0].plot(epochs, [h[key] for h in history], marker="o", label=label)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("losses")
    axes[0].legend(fontsize=7)
    for key, label in (
        ("val_sentiment_macro_f1", "sentiment macro-F1"),
        ("val_sentiment_macro_f1_tuned", "sentiment macro-F1 (bias tuned)"),
        ("val_department_accuracy", "department accuracy"),
        ("val_fmnist_accuracy", "Fashion-MNIST accuracy"),
    ):
        axes[1].plot(epochs, [h[key] for h in history], marker="o", label=label)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation metrics (split of the training data)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_confusion(
    matrix: list[list[int]], labels: tuple[str, ...] | list[str], title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_model_card(
    target: Path,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    details: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> None:
    """`model_card.md` + plots in `target`; confusion plots are (re)drawn when `details` is given."""
    target.mkdir(parents=True, exist_ok=True)
    _plot_history(history, target / "learning_curves.png")
    if details is not None:
        plots = (
            ("sentiment_confusion", SENTIMENT_LABELS, "review sentiment (test)", "confusion_sentiment.png"),
            (
                "department_confusion",
                DEPARTMENTS,
                "department from review text (test)",
                "confusion_department.png",
            ),
            (
                "fmnist_confusion",
                FMNIST_CLASSES,
                "Fashion-MNIST from the image (test)",
                "confusion_fmnist.png",
            ),
        )
        for key, labels, title, name in plots:
            _plot_confusion(details[key], labels, title, target / name)
    (target / "model_card.md").write_text(render_card(metrics, history, details, previous))


def render_card(
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    details: dict[str, Any] | None,
    previous: dict[str, Any] | None = None,
) -> str:
    """The card of one version; `previous` (the metrics.json of the version before) adds a comparison."""
    m, b, run = metrics["model"], metrics.get("baselines", {}), metrics["run"]
    version = str(run.get("model_version", "1"))
    goal = targets_of(run)
    margin = SENTIMENT_MARGIN.get(version)
    details = details or metrics.get("details", {})
    rt, ft, pt = m["reviews_test"], m["fmnist_test"], m["pairs_test"]
    tfidf = b.get("tfidf_logreg", {})
    probe = b.get("image_linear_probe", {})

    def met(value: float, target: float) -> str:
        return "met" if value >= target else f"**missed** by {target - value:.3f}"

    status = "PRELIMINARY (short training run; not the final model)" if run["preliminary"] else "final"
    if run.get("smoke"):
        status = "SMOKE RUN (a few hundred examples; meaningless figures)"
    secs = run["seconds"]
    sent, dept, fm = rt["sentiment_macro_f1"], rt["department_accuracy"], ft["accuracy"]
    pair_acc, pair_f1 = pt["leaf_accuracy"], pt["sentiment_macro_f1"]
    lines = [
        f"# Model card: `ecom_fusion` {run['version_name']}",
        "",
        f"**Status: {status}.** Written by `fusion.train` from held-out data only.",
        "",
        "A text + image fusion model for e-commerce enrichment: review sentiment (negative / neutral /",
        "positive), product category (a leaf of the taxonomy in `../taxonomy.json`, order of",
        "`../category_labels.txt`) and an L2-normalised product embedding. Text tower all-MiniLM-L6-v2 (top",
        "layer(s) fine-tuned) with a hashed n-gram wide branch; image tower EfficientNet-Lite0",
        "(top blocks fine-tuned) on grey, Fashion-MNIST-style images; a gated fusion that accepts text,",
        "image or both. How it is trained and served: docs/model.md.",
        "",
        "## Results on held-out test data vs targets",
        "",
        _row("task (test split)", "model", "target", "baseline (same run, same split)", ""),
        _row("---", "---", "---", "---", "---"),
        _row(
            f"review sentiment macro-F1 (n={rt['n']})",
            _fmt(sent),
            _fmt(goal["sentiment_macro_f1"]),
            f"TF-IDF(1-2 grams)+LR balanced {_fmt(tfidf.get('sentiment_macro_f1', '-'))}",
            met(sent, goal["sentiment_macro_f1"]),
        ),
        *(
            [
                _row(
                    "review sentiment macro-F1 above TF-IDF + LR",
                    f"{sent - tfidf['sentiment_macro_f1']:+.3f}",
                    f"+{margin:.2f}",
                    "same run, same split",
                    met(sent - tfidf["sentiment_macro_f1"], margin),
                )
            ]
            if margin is not None and isinstance(tfidf.get("sentiment_macro_f1"), float)
            else []
        ),
        _row(
            "department from review text, accuracy",
            _fmt(dept),
            _fmt(goal["department_accuracy"]),
            f"TF-IDF+LR {_fmt(tfidf.get('department_accuracy', '-'))}",
            met(dept, goal["department_accuracy"]),
        ),
        _row(
            f"Fashion-MNIST accuracy from the image alone (n={ft['n']})",
            _fmt(fm),
            _fmt(goal["fmnist_accuracy"]),
            f"linear probe on frozen EfficientNet-Lite0 {_fmt(probe.get('fmnist_accuracy', '-'))}",
            met(fm, goal["fmnist_accuracy"]),
        ),
        "",
        *(
            [
                "## Compared with the previous version (same test splits)",
                "",
                *comparison_rows(metrics, previous),
                "",
            ]
            if previous is not None
            else []
        ),
        f"Also: review sentiment accuracy {_fmt(rt['sentiment_accuracy'])} (TF-IDF+LR"
        f" {_fmt(tfidf.get('sentiment_accuracy', '-'))});"
        f" leaf accuracy from review text {_fmt(rt['leaf_accuracy'])};",
        "the nearest other Fashion-MNIST test image (cosine of EMBEDDING) has the same class in"
        f" {_fmt(ft['embedding_nearest_neighbour_same_class'])} of cases.",
        "",
        "Rules: Fashion-MNIST accuracy is the argmax over **all** leaves mapped back to the 10 classes",
        "(a leaf Fashion-MNIST lacks counts as wrong); department accuracy is the argmax of leaf",
        "probabilities summed per department. Splits: reviews stratified 80/20 with seed 0 (Title + Review",
        "Text; empty reviews dropped), Fashion-MNIST official test set. Early stopping and the sentiment",
        "class offsets used a validation split carved out of the training part only. The figures come from",
        "the exported file (fp16 weights) reloaded through the serving code path.",
        "",
        "## Modality ablations (the model's own text-only and image-only paths)",
        "",
        "No real source pairs a review with a photo. The paired test set is **synthesised**: every test",
        "review whose leaf exists in Fashion-MNIST is paired with a random Fashion-MNIST *test* image of",
        "that leaf (training used the same kind of synthetic pairs, from the training splits only).",
        "",
        _row(f"paired test set (n={pt['n']})", "both", "text only", "image only"),
        _row("---", "---", "---", "---"),
        _row(
            "leaf accuracy", _fmt(pair_acc["both"]), _fmt(pair_acc["text_only"]), _fmt(pair_acc["image_only"])
        ),
        _row("sentiment macro-F1", _fmt(pair_f1["both"]), _fmt(pair_f1["text_only"]), "n/a (no text)"),
        "",
        "## Learning curves (validation split of the training data)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Confusion matrices (test)",
        "",
        "![sentiment](confusion_sentiment.png) ![department](confusion_department.png)",
        "",
        "![Fashion-MNIST](confusion_fmnist.png)",
        "",
        "Fashion-MNIST test images predicted as a leaf outside Fashion-MNIST:"
        f" {details.get('fmnist_other_leaf', 'n/a')}.",
        "",
        "## Training run",
        "",
        f"- command: `{run['command']}`",
        f"- device: {run['device']} ({run['torch_threads']} torch thread(s)), torch {run['torch']},"
        f" Python {run['python']}",
        f"- wall time: **{secs['wall_total'] / 60:.1f} min** in all (text cache {secs['text_cache']:.0f} s,"
        f" image cache {secs['image_cache']:.0f} s, training {secs['training']:.0f} s, test evaluation"
        f" {secs['test_evaluation']:.0f} s, baselines {secs['baselines']:.0f} s), on a 2-core machine shared"
        " with other jobs",
        f"- data sizes: {run['sizes']}",
        "- sentiment class offsets tuned on validation (added to the logits inside the served model):"
        f" {[round(x, 3) for x in run['sentiment_bias']]}",
        f"- training configuration: `{run['train_config']}`",
        f"- network configuration: `{run['net_config']}`",
        "",
        _row(
            "epoch",
            "train loss",
            "val sentiment macro-F1",
            "(offsets tuned)",
            "val department acc",
            "val Fashion-MNIST acc",
            "seconds",
        ),
        _row(*(["---"] * 7)),
    ]
    kept = max(range(len(history)), key=lambda i: history[i]["val_score"]) if history else -1
    for i, h in enumerate(history):
        lines.append(
            _row(
                f"{int(h['epoch'])}{' (kept)' if i == kept else ''}",
                f"{h['train_loss']:.3f}",
                f"{h['val_sentiment_macro_f1']:.3f}",
                f"{h['val_sentiment_macro_f1_tuned']:.3f}",
                f"{h['val_department_accuracy']:.3f}",
                f"{h['val_fmnist_accuracy']:.3f}",
                f"{h['seconds']:.0f}",
            )
        )
    lines += ["", TRIED_BY_VERSION.get(version, TRIED), "", LIMITS, ""]
    return "\n".join(lines)


TRIED = """## What was tried (measured on this machine, same splits)

Targets missed are reported as measured above. Runs, in order (test figures unless marked "val"):

1. Preliminary version (milestone 1): 3,000 reviews and 6,000 images, one epoch, two tuned MiniLM
   layers, EfficientNet blocks 8+ tuned: sentiment macro-F1 0.637, department 0.851, Fashion-MNIST
   0.794 (test subsets of 1,000 reviews / 2,000 images).
2. A bug found on the way: the caches were first computed with the frozen parts in training mode
   (BatchNorm batch statistics, dropout), which gave Fashion-MNIST 0.82 on validation but 0.61 through
   the serving path. Fixed (frozen parts always in eval mode; the card's figures come from the
   exported file through the serving path, which is how the gap was caught).
3. Full run A: one tuned MiniLM layer (cost: two layers add about 0.45 s per step, about +60% of the
   step, on one thread), blocks 11+ tuned at 64 px on two cached views, 128 images per step, a wide
   branch for sentiment only (learning rate 2e-2), department-loss weight 0.5; 48.5 min: sentiment
   0.681, department 0.886, Fashion-MNIST 0.927 (val 0.678 / 0.897 / 0.932 after two epochs).
4. Full run B, this version: the wide branch also feeds the category logits, the whole wide branch is
   dropped for half of the training rows (the deep part must predict alone), wide learning rate 5e-3,
   192 images per step, department-loss weight 1.0: sentiment 0.680, department 0.888, Fashion-MNIST
   0.925, i.e. no measurable change from A (validation differences are within the noise of a 1,812
   review validation split). Synthetic text + image pairs: leaf accuracy 0.95 with both modalities
   against 0.79 (text) and 0.89 (image) alone, so the fusion itself works.
5. Sentiment class offsets tuned on validation moved validation macro-F1 by +0.003 to +0.035; the
   class-weighted loss already balances the classes.

Not tried for lack of CPU time on this machine: more tuned MiniLM layers or full fine-tuning (about 29
min per epoch), full EfficientNet fine-tuning (about 12 min per epoch at 64 px) or a larger input size,
more epochs. Those are the next steps on a GPU, where the same command runs unchanged."""

TRIED_V2 = """## What was tried for this version (measured on this machine, same splits)

Version 1 fine-tuned one MiniLM layer on cached hidden states and EfficientNet-Lite0 from block 11:
sentiment 0.680, department 0.888, Fashion-MNIST 0.925 (its card lists the runs before it).

1. This version fine-tunes all six MiniLM layers (only the embedding output is cached: it stays
   frozen) at learning rate 1e-4 and EfficientNet-Lite0 from block 8 (the 112-channel stage onwards;
   blocks 0-7 cached on two augmented views), with the recipe of version 1 otherwise (AdamW, 6%
   warm-up then linear decay, token / span / n-gram dropout, shifted and flipped image views,
   synthesised pairs, seed 0).
2. How deep to tune the image tower, measured in 30-step runs (960 reviews, 3,000 images): 4.7 s per
   step with blocks 8+ and 5.5 s with blocks 5+ (the 80-channel stage too), validation Fashion-MNIST
   0.734 against 0.750, within the noise of so short a run (load average about 4; version 1 took
   1.5 s per step on a quiet machine). Blocks 8+
   were kept for the time; blocks 5+ were not run in full.
3. Epochs: a two-epoch run was started first; on the machine shared with other work (load average
   5-8 on 2 cores) its frozen-part caches alone took 32 min, so it was stopped once they were on disk.
   A one-epoch run from those caches then ran at 9-14 s per step (510 steps: about 1.5 hours), which
   did not fit either; it was stopped after about 40 steps and this version was trained with
   `--max-steps 260` (8,320 of the 16,301 training reviews seen once, about 50,000 image views; the
   learning rate anneals to zero over the 260 steps). More than one pass was therefore not measured
   on validation, and the learning curve has one point.

Not tried for lack of CPU time: a full epoch or more (the checkpoints and `--resume` make a longer run
on this machine a matter of wall time), tuning blocks 5+ or the whole image tower, a larger image size,
layer-wise learning-rate decay for the text tower."""

TRIED_BY_VERSION = {"1": TRIED, "2": TRIED_V2}

LIMITS = """## Intended use and limits

- Sentiment is meaningful only when TEXT is present; for image-only requests it is the fusion head's
  output without text and should be ignored.
- English text only (MiniLM's vocabulary); the reviews are women's clothing from one retailer.
- Images: trained on 28x28 grey Fashion-MNIST photos. Real colour photos are converted to grey,
  negated when their border is bright (product on white) and padded to a square, to look alike; this
  transfer is untested on real catalogue photos.
- Footwear and bags exist only as images; intimate, swim, skirt, shorts and trend only as text."""


def previous_metrics(version_dir: Path) -> dict[str, Any] | None:
    """metrics.json of the version numbered one below `version_dir`, when it exists beside it."""
    import json

    if not version_dir.name.isdigit() or int(version_dir.name) <= 1:
        return None
    path = version_dir.parent / str(int(version_dir.name) - 1) / "metrics.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    """Re-render a version's card from its metrics.json and a run's history.json (plots kept)."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m fusion.report", description=main.__doc__)
    p.add_argument("version_dir", type=Path)
    p.add_argument("--history", type=Path, default=Path("runs/full/history.json"))
    args = p.parse_args(argv)
    metrics = json.loads((args.version_dir / "metrics.json").read_text())
    history = json.loads(args.history.read_text())["epochs"]
    previous = previous_metrics(args.version_dir)
    (args.version_dir / "model_card.md").write_text(render_card(metrics, history, None, previous))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
