"""The nearest-neighbour benchmark's parts: the data, exact search, recall, and a tiny run of every
candidate (the figures themselves come from `python -m benchmarks ann`)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ann import (
    CANDIDATES,
    LIBRARY,
    AnnOptions,
    DataShape,
    clustered_unit_vectors,
    exact_top_k,
    installed,
    markdown,
    recall_at_k,
    run_ann,
)


def test_the_data_are_unit_vectors_reproducible_and_clustered() -> None:
    shape = DataShape(dim=32, groups=4, clusters=40)
    a = clustered_unit_vectors(2000, shape, seed=0)
    assert a.dtype == np.float32 and a.shape == (2000, 32)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, clustered_unit_vectors(2000, shape, seed=0))
    queries = clustered_unit_vectors(50, shape, seed=0, draw_seed=5)
    assert not np.array_equal(queries, a[:50])  # fresh draws ...
    top1 = (queries @ a.T).max(axis=1)
    assert float(np.median(top1)) > 0.8  # ... of the same clusters, not random directions


def test_exact_top_k_is_the_brute_force_answer_across_blocks() -> None:
    base = clustered_unit_vectors(1000, DataShape(dim=16, groups=3, clusters=10), seed=1)
    queries = base[:7] * 0.9 + base[7:14] * 0.1
    truth = exact_top_k(base, queries, 5, block=128)
    expected = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(truth, expected)


def test_recall_counts_the_overlap_per_query() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k([[1, 2, 3, 4], [8, 7, 6, 5]], truth, 4) == 1.0
    assert recall_at_k([[1, 2, 9, 9], [0, 0, 0, 5]], truth, 4) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="one answer per query"):
        recall_at_k([[1]], truth, 4)


# FAISS and USearch are measured, not depended on: where they are not installed, hnswlib runs alone.
AVAILABLE = tuple(c for c in CANDIDATES if installed(LIBRARY[c]))


@pytest.mark.timeout(120)
def test_every_installed_candidate_runs_and_finds_the_neighbours() -> None:
    assert "hnswlib" in AVAILABLE  # the project's dependency
    options = AnnOptions(
        n=1500,
        shape=DataShape(dim=32, groups=4, clusters=30),
        queries=40,
        live=50,
        replace=20,
        threads=1,
        exact_queries=5,
        candidates=AVAILABLE,
    )
    result = run_ann(options, in_process=True)
    rows = {r["candidate"]: r for r in result["rows"]}
    assert set(rows) == {"exact (numpy)", *AVAILABLE}
    for name in AVAILABLE:
        row = rows[name]
        assert row["chosen"] is not None and row["chosen"]["recall"] >= 0.95, row["sweep"]
        assert row["insert"]["n"] == 50 and row["serialised_bytes"] > 1500 * 32
        assert (row["replace"] is None) == (name == "faiss-hnsw"), row.get("replace_error")
    table = markdown(result)
    assert all(f"| {name} |" in table for name in AVAILABLE)
    assert ("not supported" in table) == ("faiss-hnsw" in AVAILABLE)


def test_unknown_candidates_and_empty_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown candidates"):
        run_ann(AnnOptions(n=100, candidates=("annoy",)))
    with pytest.raises(ValueError, match="need n"):
        run_ann(AnnOptions(n=1, candidates=("hnswlib",)))


def test_a_candidate_whose_library_is_missing_is_refused_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import benchmarks.ann as ann

    monkeypatch.setattr(ann, "installed", lambda module: module != "usearch")
    with pytest.raises(ValueError, match=r"pip install usearch==2\.26\.6"):
        run_ann(AnnOptions(n=100, candidates=("hnswlib", "usearch-f16")))
