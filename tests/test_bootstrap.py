"""Cluster bootstrap (bootstrap.py): groups of a predictions table, draws, weights against the explicit
resamples, intervals that do not shrink when every image is listed twice, and bounded memory."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from image_learner.evaluation import bootstrap
from image_learner.evaluation import metrics
from image_learner.evaluation import regression_metrics as rm


def test_cluster_ids_join_sample_ids_and_duplicate_groups_transitively():
    table = pd.DataFrame({"sample_id": ["L1", "L1", "L2", "", None, "L3", "L4"],
                          "duplicate_group": [0, 1, 1, 2, 3, 3, 4]})
    # rows 0-1 share L1, 1-2 a duplicate group: 0, 1, 2 one group; 3 alone (no id, own duplicate group);
    # 4 (no id) and 5 share a duplicate group; 6 alone
    assert bootstrap.cluster_ids(table).tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert bootstrap.cluster_ids(table[["sample_id"]]).tolist() == [0, 0, 1, 2, 3, 4, 5]  # missing ids: own groups
    assert bootstrap.cluster_ids(pd.DataFrame({"x": [1, 2, 3]})).tolist() == [0, 1, 2]
    numeric = pd.DataFrame({"sample_id": [7.0, np.nan, 7.0], "duplicate_group": [0, 1, 2]})  # as read from CSV
    assert bootstrap.cluster_ids(numeric).tolist() == [0, 1, 0]


def test_weights_count_the_drawn_groups_rows_whatever_the_chunk_size():
    groups = np.array([2, 0, 2, 1, 0, 2])  # numbered by first appearance: 0, 1, 0, 2, 1, 0
    explicit = list(bootstrap.resample_rows(6, groups, 23, 5))
    for max_cells in (6, 6 * 4, 10 ** 6):
        weights = np.hstack(list(bootstrap.resample_weights(6, groups, 23, 5, max_cells)))
        assert weights.shape == (6, 23)
        for r, rows in enumerate(explicit):
            assert np.array_equal(weights[:, r], np.bincount(rows, minlength=6)), (max_cells, r)
    first = explicit[0]
    members = {g: set(np.flatnonzero(groups == g)) for g in set(groups)}
    assert any(set(first) >= m for m in members.values())  # a drawn group comes with all its rows
    assert all(set(first) & m in (set(), m) for m in members.values())  # never part of a group


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_regression_bootstrap_equals_direct_computation(seed):
    """Known groups of 1-4 rows (ties in values and errors, so the ranks and the median are tested too):
    every metric of every resample equals split_metrics on the drawn groups' rows written out."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(9), rng.integers(1, 5, 9))
    n = len(groups)
    true = rng.integers(20, 30, n).astype(float)
    pred = true + rng.integers(-3, 4, n)
    samples = rm.bootstrap_samples(true, pred, 24.0, n_resamples=40, seed=seed, groups=groups, max_cells=3 * n)
    for r, rows in enumerate(bootstrap.resample_rows(n, groups, 40, seed)):
        direct = rm.split_metrics(true[rows], pred[rows], 24.0)
        for name, values in samples.items():
            expected = np.nan if direct[name] is None else direct[name]
            assert values[r] == pytest.approx(expected, abs=1e-9, nan_ok=True), (name, r)


def _lesions(n_lesions: int, seed: int = 0) -> pd.DataFrame:
    """A binary test split of one image per lesion, with noisy scores."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["benign", "malignant"], n_lesions, p=[0.6, 0.4])
    p = np.clip(0.5 + np.where(label == "malignant", 0.15, -0.15) + rng.normal(0, 0.25, n_lesions), 0.01, 0.99)
    return pd.DataFrame({"image": [f"l{i}_orig.jpg" for i in range(n_lesions)], "split": "test",
                         "true_label": label, "predicted_label": np.where(p >= 0.5, "malignant", "benign"),
                         "prob_benign": 1 - p, "prob_malignant": p, "sample_id": [f"L{i}" for i in range(n_lesions)],
                         "duplicate_group": np.arange(n_lesions),
                         "true_value": 40 + 20 * p + rng.normal(0, 8, n_lesions),
                         "predicted_value": 40 + 20 * p})


def _width(interval) -> float:
    return interval[1] - interval[0]


def test_listing_every_image_twice_leaves_the_intervals_unchanged():
    """Each lesion's second image (a flip: same sample id, same duplicate group) adds no information: the
    group bootstrap's intervals stay the same, while the row bootstrap's shrink by about 1/sqrt(2)."""
    once = _lesions(150)
    twice = pd.concat([once, once.assign(image=once["image"].str.replace("orig", "flip"))], ignore_index=True)
    classes = ["benign", "malignant"]
    before = metrics.metrics_by_split(once, classes)["test"]
    after = metrics.metrics_by_split(twice, classes)["test"]
    assert after["ci95_basis"]["groups"] == 150 and after["ci95_basis"]["rows"] == 300
    assert after["ci95_basis"]["grouped_by"] == ["sample id", "duplicate group"]
    for name in metrics.HEADLINE:
        assert after["ci95"][name] == pytest.approx(before["ci95"][name], abs=1e-12), name
    args = (twice["true_label"], twice[["prob_benign", "prob_malignant"]].to_numpy(), classes, twice["predicted_label"])
    rows_only = metrics.bootstrap_ci(*args)  # the earlier row bootstrap
    ratio = _width(rows_only["balanced_accuracy"]) / _width(after["ci95"]["balanced_accuracy"])
    assert 0.55 < ratio < 0.85
    reg_before = rm.metrics_by_split(once, splits=("test",), baseline=50.0)["test"]["ci95"]
    reg_after = rm.metrics_by_split(twice, splits=("test",), baseline=50.0)["test"]["ci95"]
    for name in ("mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error", "mae_gain_over_baseline"):
        assert _width(reg_after[name]) == pytest.approx(_width(reg_before[name]), rel=1e-9), name
    reg_rows = rm.bootstrap_ci(twice["true_value"], twice["predicted_value"], 50.0)
    assert 0.55 < _width(reg_rows["mae_gain_over_baseline"]) / _width(reg_after["mae_gain_over_baseline"]) < 0.85


def test_without_groups_the_intervals_are_the_row_bootstraps():
    table = _lesions(80).drop(columns=["sample_id", "duplicate_group"])
    found = metrics.metrics_by_split(table, ["benign", "malignant"], seed=3)["test"]
    assert found["ci95_basis"] == {"method": "percentile bootstrap of rows", "resamples": 1000, "level": 0.95,
                                   "rows": 80, "groups": 80, "grouped_by": []}
    args = (table["true_label"], table[["prob_benign", "prob_malignant"]].to_numpy(), ["benign", "malignant"],
            table["predicted_label"])
    assert found["ci95"] == metrics.bootstrap_ci(*args, seed=3)
    assert "each its own group" in bootstrap.describe(found["ci95_basis"])


def test_bootstrap_of_100k_images_stays_well_under_1_gb():
    """100,000 labelled images, 3 classes, 1,000 resamples: chunks keep the peak far below the earlier
    n x 1000 float64 arrays (0.8 GB each, several at once)."""
    rng = np.random.default_rng(0)
    n, classes = 100_000, list("abc")
    y_true = rng.choice(classes, n)
    proba = rng.dirichlet(np.ones(3), n)
    groups = np.arange(n) // 2
    tracemalloc.start()
    try:
        intervals = metrics.bootstrap_ci(y_true, proba, classes, groups=groups)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * 2 ** 20, peak
    assert intervals["accuracy"][0] < 1 / 3 < intervals["accuracy"][1]


def test_mean_samples_equal_the_share_per_explicit_resample_of_whole_groups():
    # a coverage interval's resamples: the covered share of each resample's rows, groups drawn whole
    rng = np.random.default_rng(3)
    covered = rng.random(40) < 0.8
    groups = np.repeat(np.arange(16), [1, 2, 3, 4] * 4)[:40]
    fast = bootstrap.mean_samples(covered, groups, n_resamples=200, seed=5)
    slow = [covered[rows].mean() for rows in bootstrap.resample_rows(40, groups, 200, seed=5)]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    assert len(fast) == 200 and 0.5 < fast.mean() < 1.0
