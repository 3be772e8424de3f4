"""The taxonomy, the source mappings onto it, and the files the model repository publishes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fusion import taxonomy as tx
from fusion.metrics import department_predictions, fmnist_predictions

MODEL_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "ecom_fusion"


def test_leaves_are_unique_and_in_known_departments() -> None:
    assert len(set(tx.LEAF_NAMES)) == tx.NUM_LEAVES == 19
    assert {leaf.department for leaf in tx.LEAVES} == set(tx.DEPARTMENTS)


def test_every_fashion_mnist_class_has_its_own_leaf() -> None:
    leaves = [tx.fmnist_to_leaf_index(c) for c in range(10)]
    assert len(set(leaves)) == 10
    back = tx.leaf_to_fmnist_class()
    assert [int(back[leaf]) for leaf in leaves] == list(range(10))
    assert int((back >= 0).sum()) == 10


@pytest.mark.parametrize(
    ("class_name", "leaf", "department"),
    [
        ("Knits", "tshirt_top", "tops"),
        ("Fine gauge", "pullover", "tops"),
        ("Jackets", "coat", "outerwear"),
        ("Outerwear", "coat", "outerwear"),
        ("Casual bottoms", "trouser", "bottoms"),
        ("Chemises", "intimates", "intimate"),
        ("Trend", "trend", "trend"),
    ],
)
def test_review_class_mapping(class_name: str, leaf: str, department: str) -> None:
    index = tx.review_class_to_leaf_index(class_name)
    assert tx.LEAF_NAMES[index] == leaf
    assert tx.LEAVES[index].department == department


def test_unknown_or_missing_review_class_maps_to_minus_one() -> None:
    assert tx.review_class_to_leaf_index(None) == -1
    assert tx.review_class_to_leaf_index("Hats") == -1


def test_review_department_is_the_department_of_its_class_leaf_in_the_real_data() -> None:
    from fusion.data import load_reviews

    reviews = load_reviews()
    known = reviews.leaf >= 0
    assert known.mean() > 0.99
    leaf_departments = tx.leaf_department_indices()[reviews.leaf[known]]
    np.testing.assert_array_equal(leaf_departments, reviews.department[known])


@pytest.mark.parametrize(("rating", "label"), [(1, 0), (2, 0), (3, 1), (4, 2), (5, 2)])
def test_sentiment_from_rating(rating: int, label: int) -> None:
    assert tx.sentiment_from_rating(rating) == label


def test_sentiment_from_rating_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="rating"):
        tx.sentiment_from_rating(0)


def test_department_probabilities_sum_the_leaves_of_each_department() -> None:
    probs = np.zeros((1, tx.NUM_LEAVES), dtype=np.float32)
    # Three tops leaves at 0.2 each beat the single most likely leaf (dress, 0.4).
    for name in ("tshirt_top", "shirt", "pullover"):
        probs[0, tx.LEAF_INDEX[name]] = 0.2
    probs[0, tx.LEAF_INDEX["dress"]] = 0.4
    dept = tx.department_probabilities(probs)
    assert dept.sum() == pytest.approx(1.0)
    assert tx.DEPARTMENTS[int(department_predictions(probs)[0])] == "tops"


def test_fmnist_accuracy_is_strict_about_leaves_outside_fashion_mnist() -> None:
    probs = np.zeros((2, tx.NUM_LEAVES), dtype=np.float32)
    probs[0, tx.LEAF_INDEX["ankle_boot"]] = 1.0
    probs[1, tx.LEAF_INDEX["skirt"]] = 1.0
    assert fmnist_predictions(probs).tolist() == [9, -1]


def test_committed_repository_files_match_the_code() -> None:
    labels = (MODEL_DIR / "category_labels.txt").read_text().splitlines()
    assert labels == list(tx.LEAF_NAMES)
    assert json.loads((MODEL_DIR / "taxonomy.json").read_text()) == tx.taxonomy_document()
    for config in (MODEL_DIR / "config.pbtxt", MODEL_DIR / "configs" / "gpu.pbtxt"):
        text = config.read_text()
        match = re.search(r'key: "category_labels" value \{ string_value: "(.*?)" \}', text)
        assert match is not None
        assert json.loads(match.group(1).replace('\\"', '"')) == labels
        dims = re.search(r'name: "CATEGORY", data_type: TYPE_FP32, dims: \[ (\d+) \]', text)
        assert dims is not None and int(dims.group(1)) == len(labels)
        emb = re.search(r'key: "embedding_dim" value \{ string_value: "(\d+)" \}', text)
        emb_dims = re.search(r'name: "EMBEDDING", data_type: TYPE_FP32, dims: \[ (\d+) \]', text)
        assert emb is not None and emb_dims is not None and emb.group(1) == emb_dims.group(1)
    assert "KIND_GPU" in (MODEL_DIR / "configs" / "gpu.pbtxt").read_text()
    assert "KIND_CPU" in (MODEL_DIR / "config.pbtxt").read_text()
