"""Regression metrics: hand-worked values, scikit-learn/SciPy agreement, edge cases, the median
baseline and the seeded bootstrap."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from image_learner.evaluation import bootstrap
from image_learner.evaluation import regression_metrics as rm

TRUE = [1.0, 2.0, 3.0, 4.0]
PRED = [1.5, 2.0, 2.5, 5.0]


def test_hand_computed_values():
    # errors 0.5, 0, -0.5, 1
    found = rm.split_metrics(TRUE, PRED)
    assert found["n"] == 4
    assert found["mae"] == pytest.approx(2.0 / 4)  # (0.5 + 0 + 0.5 + 1) / 4
    assert found["rmse"] == pytest.approx(math.sqrt(1.5 / 4))  # (0.25 + 0 + 0.25 + 1) / 4 = 0.375
    assert found["median_absolute_error"] == pytest.approx(0.5)  # sorted 0, 0.5, 0.5, 1
    # SST: true centred -1.5, -0.5, 0.5, 1.5 -> 5; SSE 1.5
    assert found["r2"] == pytest.approx(1 - 1.5 / 5)
    # predictions centred (mean 2.75): -1.25, -0.75, -0.25, 2.25; products sum 5.5; squares 7.25
    assert found["pearson_r"] == pytest.approx(5.5 / math.sqrt(5 * 7.25))
    assert found["spearman_r"] == pytest.approx(1.0)  # same order
    assert list(found) == ["n", "mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error"]


def test_spearman_by_hand_with_and_without_ties():
    # ranks 1 2 3 4 against 2 1 4 3: d^2 sums to 4, rho = 1 - 6 * 4 / (4 * 15)
    assert rm.split_metrics(TRUE, [2, 1, 4, 3])["spearman_r"] == pytest.approx(0.6)
    # tied predictions get the mean rank 1.5: Pearson of ranks = 4.5 / sqrt(5 * 4.5)
    assert rm.split_metrics(TRUE, [1, 1, 2, 3])["spearman_r"] == pytest.approx(4.5 / math.sqrt(22.5))


def test_median_baseline_by_hand():
    found = rm.split_metrics(TRUE, PRED, baseline=2.5)  # |1-2.5|, |2-2.5|, ... = 1.5, 0.5, 0.5, 1.5
    assert found["baseline_median"] == 2.5
    assert found["baseline_median_mae"] == pytest.approx(1.0)
    assert found["baseline_median_rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert found["mae_gain_over_baseline"] == pytest.approx(0.5)
    assert "baseline_median_mae" not in rm.split_metrics(TRUE, PRED)  # no train median given: no baseline


def test_agrees_with_scikit_learn_and_scipy():
    rng = np.random.default_rng(3)
    true = rng.normal(50, 15, 200)
    pred = true + rng.normal(0, 8, 200)
    found = rm.split_metrics(true, pred)
    assert found["mae"] == pytest.approx(skm.mean_absolute_error(true, pred))
    assert found["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(true, pred)))
    assert found["r2"] == pytest.approx(skm.r2_score(true, pred))
    assert found["median_absolute_error"] == pytest.approx(skm.median_absolute_error(true, pred))
    assert found["pearson_r"] == pytest.approx(stats.pearsonr(true, pred)[0])
    rounded = np.round(pred)  # with ties
    assert rm.split_metrics(true, rounded)["spearman_r"] == pytest.approx(stats.spearmanr(true, rounded)[0])


def test_undefined_metrics_are_none():
    constant_target = rm.split_metrics([3, 3, 3], [1, 2, 3])
    assert constant_target["r2"] is None and constant_target["pearson_r"] is None
    assert constant_target["spearman_r"] is None and constant_target["mae"] == pytest.approx(1.0)
    constant_prediction = rm.split_metrics([1, 2, 3], [2, 2, 2])
    assert constant_prediction["pearson_r"] is None and constant_prediction["spearman_r"] is None
    assert constant_prediction["r2"] == pytest.approx(0.0)  # the mean as prediction explains nothing
    single = rm.split_metrics([3.0], [1.0])
    assert single == {"n": 1, "mae": 2.0, "rmse": 2.0, "r2": None, "pearson_r": None, "spearman_r": None,
                      "median_absolute_error": 2.0}
    assert rm.split_metrics([], []) == {"n": 0}


@pytest.mark.parametrize("true, pred, word", [([1, np.nan, 3], [1, 2, 3], "true"),
                                              ([1, 2, 3], [1, np.inf, 3], "predicted")])
def test_missing_values_are_refused(true, pred, word):
    with pytest.raises(ValueError, match=f"1 {word} value"):
        rm.split_metrics(true, pred)
    with pytest.raises(ValueError, match=f"1 {word} value"):
        rm.bootstrap_ci(true, pred)


def test_bootstrap_is_seeded_contains_the_estimate_and_equals_each_resample():
    rng = np.random.default_rng(0)
    true = rng.uniform(20, 80, 60)
    pred = true + rng.normal(0, 10, 60)
    first, again = rm.bootstrap_ci(true, pred, 50.0, seed=7), rm.bootstrap_ci(true, pred, 50.0, seed=7)
    assert first == again and first != rm.bootstrap_ci(true, pred, 50.0, seed=8)
    point = rm.split_metrics(true, pred, 50.0)
    for name, (low, high) in first.items():
        assert low <= point[name] <= high, name
    samples = rm.bootstrap_samples(true, pred, 50.0, n_resamples=20, seed=7)
    for r, rows in enumerate(bootstrap.resample_rows(60, None, 20, 7)):
        each = rm.split_metrics(true[rows], pred[rows], 50.0)
        for name, values in samples.items():
            assert values[r] == pytest.approx(each[name]), name


def test_bootstrap_of_one_row_gives_no_correlation_interval():
    intervals = rm.bootstrap_ci([3.0], [1.0])
    assert intervals["mae"] == [2.0, 2.0] and intervals["r2"] is None and intervals["pearson_r"] is None


def test_metrics_by_split_shape_and_train_median_baseline():
    table = pd.DataFrame({"split": ["train"] * 5 + ["validation"] * 2 + ["test"] * 4,
                          "true_value": [10, 20, 30, 40, 50, 25, 35] + TRUE,
                          "predicted_value": [12, 18, 33, 41, 45, 30, 30] + PRED})
    found = rm.metrics_by_split(table, seed=42)
    assert list(found) == ["train", "validation", "test"]
    assert found["test"]["baseline_median"] == 30.0  # the train median, used for every split
    assert found["test"]["baseline_median_mae"] == pytest.approx(np.mean(np.abs(np.array(TRUE) - 30)))
    assert found["test"]["mae"] == pytest.approx(0.5) and "ci95" in found["test"]
    assert "ci95" not in found["train"] and found["validation"]["n"] == 2
    assert set(found["test"]["ci95"]) == set(rm.HEADLINE + rm.BASELINE)
    new_images = table[table.split == "test"]  # a saved model on new images: no train split, no baseline
    assert "baseline_median_mae" not in rm.metrics_by_split(new_images, splits=("test",))["test"]
    given = rm.metrics_by_split(new_images, splits=("test",), baseline=2.5)["test"]
    assert given["baseline_median_mae"] == pytest.approx(1.0)
