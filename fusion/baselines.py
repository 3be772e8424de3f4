"""Baselines computed in the same run, on the same splits as the model.

- Text: TF-IDF (word 1-2 grams) + logistic regression (balanced class weights for sentiment), the
  reference of the issue, for sentiment and for department.
- Image: a linear probe (multinomial logistic regression, L2, L-BFGS) on frozen ImageNet
  EfficientNet-Lite0 features (global-average-pooled, 1280-d) at the model's input size, through the
  same preprocessing.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fusion.data import FashionMnist, Reviews
from fusion.metrics import accuracy, confusion, macro_f1
from fusion.network import ImageTower, NetConfig, load_image_encoder
from fusion.preprocess import prepare_image


def tfidf_logreg(
    reviews: Reviews, train_rows: npt.NDArray[np.int64], test_rows: npt.NDArray[np.int64], seed: int
) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([reviews.texts[i] for i in train_rows])
    x_test = vectorizer.transform([reviews.texts[i] for i in test_rows])
    y_train, y_test = reviews.sentiment[train_rows], reviews.sentiment[test_rows]
    sentiment = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed).fit(
        x_train, y_train
    )
    pred = sentiment.predict(x_test)
    d_train, d_test = reviews.department[train_rows], reviews.department[test_rows]
    department = LogisticRegression(max_iter=2000, C=10.0, random_state=seed).fit(
        x_train[d_train >= 0], d_train[d_train >= 0]
    )
    d_pred = department.predict(x_test[d_test >= 0])
    return {
        "sentiment_macro_f1": macro_f1(y_test, pred, 3),
        "sentiment_accuracy": accuracy(y_test, pred),
        "sentiment_confusion": confusion(y_test, pred, 3).tolist(),
        "department_accuracy": accuracy(d_test[d_test >= 0], d_pred),
        "seconds": time.perf_counter() - t0,
    }


def fit_softmax_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int, l2: float = 1e-4, iterations: int = 150
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L2) on standardised features, full-batch L-BFGS: deterministic."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    weight = torch.zeros(x.shape[1], n_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach(), bias.detach(), mean, std


@torch.no_grad()
def image_linear_probe(
    train_maps: torch.Tensor,
    train_labels: npt.NDArray[np.int64],
    test: FashionMnist,
    net_cfg: NetConfig,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """`train_maps`: the cached frozen-stage maps of the training images (view 0 = unaugmented)."""
    t0 = time.perf_counter()
    tower = ImageTower(load_image_encoder(), net_cfg.image_tune_from_block, 0.0).to(device).eval()
    train_feat = torch.cat(
        [tower.top(train_maps[i : i + 512].to(device).float()) for i in range(0, len(train_maps), 512)]
    )
    test_feat = []
    for i in range(0, len(test), 512):
        x = np.stack([prepare_image(img, net_cfg.image_size) for img in test.images[i : i + 512]])
        test_feat.append(tower.top(tower.bottom(torch.from_numpy(x).to(device))))
    test_x = torch.cat(test_feat)
    weight, bias, mean, std = fit_softmax_probe(
        train_feat, torch.from_numpy(train_labels).to(device), 10, seed
    )
    pred = (((test_x - mean) / std) @ weight + bias).argmax(1).cpu().numpy()
    return {
        "fmnist_accuracy": accuracy(test.labels, pred),
        "fmnist_confusion": confusion(test.labels, pred, 10).tolist(),
        "seconds": time.perf_counter() - t0,
    }
