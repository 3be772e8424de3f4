"""One product taxonomy covering both data sources, and the label mappings into it.

The model's CATEGORY output is a probability per *leaf*, in the order of `LEAVES`. Every leaf belongs
to exactly one *department* (the product type). The two real sources map onto the leaves:

- Women's Clothing E-Commerce Reviews: `Class Name` -> leaf (`REVIEW_CLASS_TO_LEAF`); the source's
  `Department Name` is a function of `Class Name`, and `REVIEW_DEPARTMENT_TO_DEPARTMENT` maps it onto
  our departments (Jackets -> outerwear, the rest by name), so department accuracy on the taxonomy is
  accuracy on the source department.
- Fashion-MNIST: each of the 10 classes is one leaf (`FMNIST_TO_LEAF`). A CATEGORY argmax on a leaf with
  no Fashion-MNIST class (skirt, swim, ...) counts as wrong for Fashion-MNIST accuracy (strict).

Sentiment comes from the review rating: 1-2 negative, 3 neutral, 4-5 positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

DEPARTMENTS: tuple[str, ...] = (
    "tops",
    "dresses",
    "bottoms",
    "outerwear",
    "intimate",
    "trend",
    "footwear",
    "bags",
)


@dataclass(frozen=True)
class Leaf:
    name: str
    department: str


LEAVES: tuple[Leaf, ...] = (
    Leaf("tshirt_top", "tops"),
    Leaf("shirt", "tops"),
    Leaf("pullover", "tops"),
    Leaf("dress", "dresses"),
    Leaf("trouser", "bottoms"),
    Leaf("skirt", "bottoms"),
    Leaf("shorts", "bottoms"),
    Leaf("coat", "outerwear"),
    Leaf("intimates", "intimate"),
    Leaf("lounge", "intimate"),
    Leaf("sleep", "intimate"),
    Leaf("swim", "intimate"),
    Leaf("legwear", "intimate"),
    Leaf("layering", "intimate"),
    Leaf("trend", "trend"),
    Leaf("sandal", "footwear"),
    Leaf("sneaker", "footwear"),
    Leaf("ankle_boot", "footwear"),
    Leaf("bag", "bags"),
)

LEAF_NAMES: tuple[str, ...] = tuple(leaf.name for leaf in LEAVES)
LEAF_INDEX: dict[str, int] = {name: i for i, name in enumerate(LEAF_NAMES)}
NUM_LEAVES = len(LEAVES)

# Fashion-MNIST class index -> (class name as in the data set's README, leaf).
FMNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FMNIST_TO_LEAF: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

REVIEW_CLASS_TO_LEAF: dict[str, str] = {
    "Knits": "tshirt_top",
    "Blouses": "shirt",
    "Sweaters": "pullover",
    "Fine gauge": "pullover",
    "Dresses": "dress",
    "Pants": "trouser",
    "Jeans": "trouser",
    "Casual bottoms": "trouser",
    "Skirts": "skirt",
    "Shorts": "shorts",
    "Jackets": "coat",
    "Outerwear": "coat",
    "Intimates": "intimates",
    "Chemises": "intimates",
    "Lounge": "lounge",
    "Sleep": "sleep",
    "Swim": "swim",
    "Legwear": "legwear",
    "Layering": "layering",
    "Trend": "trend",
}

REVIEW_DEPARTMENT_TO_DEPARTMENT: dict[str, str] = {
    "Tops": "tops",
    "Dresses": "dresses",
    "Bottoms": "bottoms",
    "Jackets": "outerwear",
    "Intimate": "intimate",
    "Trend": "trend",
}


def sentiment_from_rating(rating: int) -> int:
    """1-2 negative (0), 3 neutral (1), 4-5 positive (2)."""
    if not 1 <= rating <= 5:
        raise ValueError(f"rating must be 1..5, got {rating}")
    return 0 if rating <= 2 else 1 if rating == 3 else 2


def department_of_leaf(leaf: str) -> str:
    return LEAVES[LEAF_INDEX[leaf]].department


def review_class_to_leaf_index(class_name: str | None) -> int:
    """Leaf index for a review's `Class Name`, or -1 when the review has none."""
    if class_name is None or class_name not in REVIEW_CLASS_TO_LEAF:
        return -1
    return LEAF_INDEX[REVIEW_CLASS_TO_LEAF[class_name]]


def fmnist_to_leaf_index(fmnist_class: int) -> int:
    return LEAF_INDEX[FMNIST_TO_LEAF[fmnist_class]]


def leaf_to_department_matrix() -> npt.NDArray[np.float32]:
    """`[num_leaves, num_departments]` 0/1 matrix; leaf probabilities @ it = department probabilities."""
    matrix = np.zeros((NUM_LEAVES, len(DEPARTMENTS)), dtype=np.float32)
    for i, leaf in enumerate(LEAVES):
        matrix[i, DEPARTMENTS.index(leaf.department)] = 1.0
    return matrix


def leaf_department_indices() -> npt.NDArray[np.int64]:
    return np.array([DEPARTMENTS.index(leaf.department) for leaf in LEAVES], dtype=np.int64)


def department_probabilities(leaf_probs: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    return np.asarray(leaf_probs, dtype=np.float32) @ leaf_to_department_matrix()


def leaf_to_fmnist_class() -> npt.NDArray[np.int64]:
    """Leaf index -> Fashion-MNIST class index, or -1 for leaves with no Fashion-MNIST class."""
    out = np.full(NUM_LEAVES, -1, dtype=np.int64)
    for cls, leaf in enumerate(FMNIST_TO_LEAF):
        out[LEAF_INDEX[leaf]] = cls
    return out


def taxonomy_document() -> dict[str, Any]:
    """The machine-readable taxonomy written beside the served model (`taxonomy.json`)."""
    return {
        "leaves": [
            {"index": i, "name": leaf.name, "department": leaf.department} for i, leaf in enumerate(LEAVES)
        ],
        "departments": list(DEPARTMENTS),
        "sentiment_labels": list(SENTIMENT_LABELS),
        "sources": {
            "fashion_mnist": {
                "class_to_leaf": {
                    str(i): {"class_name": FMNIST_CLASSES[i], "leaf": FMNIST_TO_LEAF[i]} for i in range(10)
                },
                "accuracy_rule": "argmax over all leaves; a leaf with no Fashion-MNIST class counts as wrong",
            },
            "womens_clothing_reviews": {
                "class_to_leaf": dict(REVIEW_CLASS_TO_LEAF),
                "department_to_department": dict(REVIEW_DEPARTMENT_TO_DEPARTMENT),
                "sentiment_from_rating": {
                    "1": "negative",
                    "2": "negative",
                    "3": "neutral",
                    "4": "positive",
                    "5": "positive",
                },
                "department_rule": "argmax of leaf probabilities summed per department",
            },
        },
    }
