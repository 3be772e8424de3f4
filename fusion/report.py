"""The model card: markdown + plots (learning curves, confusion matrices), held-out data only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusion.taxonomy import DEPARTMENTS, FMNIST_CLASSES, SENTIMENT_LABELS

TARGETS = {
    "sentiment_macro_f1": 0.75,
    "fmnist_accuracy": 0.93,
    "department_accuracy": 0.90,
}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_line(metrics: dict[str, Any]) -> str:
    m = metrics["model"]
    return (
        f"test: sentiment macro-F1 {m['reviews_test']['sentiment_macro_f1']:.3f} (target 0.75), "
        f"department accuracy {m['reviews_test']['department_accuracy']:.3f} (target 0.90), "
        f"Fashion-MNIST accuracy {m['fmnist_test']['accuracy']:.3f} (target 0.93)"
    )


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


def _plot_confusion(matrix: list[list[int]], labels: tuple[str, ...] | list[str], title: str, path: Path) -> None:
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
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_model_card(
    target: Path, metrics: dict[str, Any], history: list[dict[str, float]], details: dict[str, Any]
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _plot_history(history, target / "learning_curves.png")
    _plot_confusion(details["sentiment_confusion"], SENTIMENT_LABELS, "review sentiment (test)", target / "confusion_sentiment.png")
    _plot_confusion(details["department_confusion"], DEPARTMENTS, "department from review text (test)", target / "confusion_department.png")
    _plot_confusion(details["fmnist_confusion"], FMNIST_CLASSES, "Fashion-MNIST from the image (test)", target / "confusion_fmnist.png")

    m, b, run = metrics["model"], metrics.get("baselines", {}), metrics["run"]
    rt, ft, pt = m["reviews_test"], m["fmnist_test"], m["pairs_test"]
    tfidf = b.get("tfidf_logreg", {})
    probe = b.get("image_linear_probe", {})

    def met(value: float, goal: float) -> str:
        return "met" if value >= goal else "**missed**"

    status = "PRELIMINARY (short training run; not the final model)" if run["preliminary"] else "final"
    if run.get("smoke"):
        status = "SMOKE RUN (a few hundred examples; meaningless figures)"
    secs = run["seconds"]
    lines = [
        f"# Model card: `ecom_fusion` {run['version_name']}",
        "",
        f"**Status: {status}.** Written by `fusion.train` from held-out data only.",
        "",
        "A text + image fusion model for e-commerce enrichment: review sentiment (negative / neutral / positive),",
        "product category (leaf of the taxonomy in `taxonomy.json` / `category_labels.txt`) and an L2-normalised",
        "product embedding. Text tower all-MiniLM-L6-v2 (top layers fine-tuned) with a hashed n-gram wide branch",
        "for sentiment; image tower EfficientNet-Lite0 (top blocks fine-tuned) on grey, Fashion-MNIST-style",
        "images; a gated fusion that accepts text, image or both. See docs/model.md.",
        "",
        "## Results on held-out test data vs targets",
        "",
        "| task (test split) | model | target | baseline (same run) | |",
        "| --- | --- | --- | --- | --- |",
        f"| review sentiment macro-F1 (n={rt['n']}) | {_fmt(rt['sentiment_macro_f1'])} | 0.75 | TF-IDF+LR {_fmt(tfidf.get('sentiment_macro_f1', '-'))} | {met(rt['sentiment_macro_f1'], 0.75)} |",
        f"| department from review text, accuracy | {_fmt(rt['department_accuracy'])} | 0.90 | TF-IDF+LR {_fmt(tfidf.get('department_accuracy', '-'))} | {met(rt['department_accuracy'], 0.90)} |",
        f"| Fashion-MNIST accuracy from the image (n={ft['n']}) | {_fmt(ft['accuracy'])} | 0.93 | linear probe {_fmt(probe.get('fmnist_accuracy', '-'))} | {met(ft['accuracy'], 0.93)} |",
        "",
        f"Also: review sentiment accuracy {_fmt(rt['sentiment_accuracy'])} (TF-IDF+LR {_fmt(tfidf.get('sentiment_accuracy', '-'))});",
        f"leaf accuracy from review text {_fmt(rt['leaf_accuracy'])}; nearest neighbour (cosine of EMBEDDING) of a",
        f"Fashion-MNIST test image has the same class in {_fmt(ft['embedding_nearest_neighbour_same_class'])} of cases.",
        "",
        "Rules: Fashion-MNIST accuracy is the argmax over **all** leaves mapped back to the 10 classes (a leaf",
        "Fashion-MNIST lacks counts as wrong); department accuracy is the argmax of leaf probabilities summed",
        "per department. Splits: reviews stratified 80/20 with seed 0 (Title + Review Text; empty reviews",
        "dropped), Fashion-MNIST official test set. Early stopping and the sentiment class offsets used a",
        "validation split carved out of the training part only.",
        "",
        "## Modality ablations (the model's own text-only and image-only paths)",
        "",
        "No real source pairs a review with a photo. The paired test set is **synthesised**: every test review",
        "whose leaf exists in Fashion-MNIST is paired with a random Fashion-MNIST *test* image of that leaf",
        "(training used the same kind of synthetic pairs from the training splits).",
        "",
        "| paired test set (n=%d) | both | text only | image only |" % pt["n"],
        "| --- | --- | --- | --- |",
        "| leaf accuracy | %s | %s | %s |"
        % (_fmt(pt["leaf_accuracy"]["both"]), _fmt(pt["leaf_accuracy"]["text_only"]), _fmt(pt["leaf_accuracy"]["image_only"])),
        "| sentiment macro-F1 | %s | %s | n/a (an image carries no sentiment) |"
        % (_fmt(pt["sentiment_macro_f1"]["both"]), _fmt(pt["sentiment_macro_f1"]["text_only"])),
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
        f"Fashion-MNIST test images predicted as a leaf outside Fashion-MNIST: {details.get('fmnist_other_leaf', 0)}.",
        "",
        "## Training run",
        "",
        f"- command: `{run['command']}`",
        f"- device: {run['device']} ({run['torch_threads']} torch thread(s)), torch {run['torch']}, Python {run['python']}",
        f"- wall time: {secs['wall_total'] / 60:.1f} min in all (text cache {secs['text_cache']:.0f} s, image cache"
        f" {secs['image_cache']:.0f} s, training {secs['training']:.0f} s, test evaluation {secs['test_evaluation']:.0f} s,"
        f" baselines {secs['baselines']:.0f} s)",
        f"- data sizes: {run['sizes']}",
        f"- sentiment class offsets tuned on validation (added to logits, baked into the served model): {[round(x, 3) for x in run['sentiment_bias']]}",
        f"- training configuration: `{run['train_config']}`",
        f"- network configuration: `{run['net_config']}`",
        "",
        "| epoch | train loss | val sentiment macro-F1 | (bias tuned) | val department acc | val Fashion-MNIST acc | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in history:
        lines.append(
            f"| {int(h['epoch'])}{' (kept)' if h.get('best') else ''} | {h['train_loss']:.3f} | {h['val_sentiment_macro_f1']:.3f} |"
            f" {h['val_sentiment_macro_f1_tuned']:.3f} | {h['val_department_accuracy']:.3f} | {h['val_fmnist_accuracy']:.3f} | {h['seconds']:.0f} |"
        )
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Sentiment is meaningful only when TEXT is present; for image-only requests it is the fusion head's",
        "  output without text and should be ignored.",
        "- English text only (MiniLM's vocabulary); reviews are women's clothing from one retailer.",
        "- Images: trained on 28x28 grey Fashion-MNIST photos. Real colour photos are converted to grey,",
        "  negated when their border is bright (product on white) and padded to a square, to look alike; this",
        "  transfer is untested on real catalogue photos.",
        "- Footwear and bags exist only as images; intimate, swim, skirt, shorts, trend only as text.",
        "",
    ]
    (target / "model_card.md").write_text("\n".join(lines))
