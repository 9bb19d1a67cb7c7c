"""Each metric against a value computed by hand on a small known example."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from image_learner.evaluation import metrics

CLASSES = ["a", "b", "c"]
Y_TRUE = ["a", "a", "b", "b", "c", "c"]
PROBA = np.array([
    [0.85, 0.10, 0.05],  # a, right, confidence .85
    [0.40, 0.55, 0.05],  # a, predicted b, .55
    [0.10, 0.85, 0.05],  # b, right, .85
    [0.20, 0.75, 0.05],  # b, right, .75
    [0.10, 0.15, 0.75],  # c, right, .75
    [0.65, 0.10, 0.25],  # c, predicted a, .65
])


@pytest.fixture(scope="module")
def multiclass():
    return metrics.split_metrics(Y_TRUE, PROBA, CLASSES)


def test_counting_metrics_by_hand(multiclass):
    assert multiclass["n"] == 6
    assert multiclass["accuracy"] == pytest.approx(4 / 6)
    assert multiclass["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)  # mean recall
    assert multiclass["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 1) / 3)
    f1 = [0.5, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert multiclass["macro_f1"] == pytest.approx(np.mean(f1))
    assert multiclass["weighted_f1"] == pytest.approx(np.mean(f1))  # equal supports
    # kappa: observed 4/6, chance (2*2 + 2*3 + 2*1) / 36 = 1/3 -> (2/3 - 1/3) / (1 - 1/3)
    assert multiclass["cohen_kappa"] == pytest.approx(0.5)


def test_probability_metrics_by_hand(multiclass):
    # one-vs-rest AUC: a wins 7 of 8 positive/negative pairs, b and c all 8
    assert multiclass["roc_auc_macro"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert multiclass["top_2_accuracy"] == pytest.approx(1.0)
    expected_log_loss = -np.mean([math.log(p) for p in (0.85, 0.40, 0.85, 0.75, 0.75, 0.25)])
    assert multiclass["log_loss"] == pytest.approx(expected_log_loss)
    # ECE bins: (.8,.9] 2 right at .85; (.5,.6] 1 wrong at .55; (.7,.8] 2 right at .75; (.6,.7] 1 wrong at .65
    assert multiclass["expected_calibration_error"] == pytest.approx((2 * 0.15 + 0.55 + 2 * 0.25 + 0.65) / 6)
    assert multiclass["classes_absent"] == []


def test_per_class_table_by_hand():
    rows = {r["class"]: r for r in metrics.per_class_table(Y_TRUE, PROBA, CLASSES)}
    assert rows["a"]["precision"] == pytest.approx(0.5) and rows["a"]["recall"] == pytest.approx(0.5)
    assert rows["a"]["specificity"] == pytest.approx(3 / 4)  # of b, b, c, c only the last called a
    assert rows["b"]["precision"] == pytest.approx(2 / 3) and rows["b"]["recall"] == pytest.approx(1.0)
    assert rows["a"]["roc_auc"] == pytest.approx(7 / 8)
    assert [rows[c]["support"] for c in CLASSES] == [2, 2, 2]


def test_a_class_absent_from_the_split():
    classes = CLASSES + ["d"]
    proba = np.hstack([PROBA, np.zeros((6, 1))])
    result = metrics.split_metrics(Y_TRUE, proba, classes)
    assert result["classes_absent"] == ["d"]
    assert result["roc_auc_macro"] == pytest.approx((7 / 8 + 1 + 1) / 3)  # over present classes only
    assert result["macro_f1"] == pytest.approx(metrics.split_metrics(Y_TRUE, PROBA, CLASSES)["macro_f1"])
    absent = metrics.per_class_table(Y_TRUE, proba, classes)[3]
    assert absent == {"class": "d", "precision": None, "recall": None, "specificity": 1.0, "f1": None,
                      "roc_auc": None, "support": 0}


def test_binary_task_with_a_threshold():
    classes = ["benign", "malignant"]
    y_true = ["benign", "benign", "benign", "malignant", "malignant"]
    p_pos = np.array([0.1, 0.4, 0.6, 0.7, 0.3])
    y_pred = np.where(p_pos >= 0.5, "malignant", "benign")
    result = metrics.split_metrics(y_true, np.column_stack([1 - p_pos, p_pos]), classes, y_pred)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # sensitivity, specificity
    assert result["roc_auc_macro"] == pytest.approx(4 / 6)
    assert "top_2_accuracy" not in result  # k must be below the number of classes
    # Youden's J: 0.7 gives sensitivity 1/2 at specificity 1 (J = .5), better than any other cut
    assert metrics.choose_threshold(np.array(y_true) == "malignant", p_pos) == pytest.approx(0.7)
    assert metrics.choose_threshold([True, True], [0.2, 0.9]) == 0.5


def test_undefined_metrics_are_none_not_errors():
    result = metrics.split_metrics(["a", "a"], np.array([[0.9, 0.1], [0.6, 0.4]]), ["a", "b"])
    assert result["accuracy"] == 1.0 and result["roc_auc_macro"] is None
    assert metrics.split_metrics([], np.zeros((0, 2)), ["a", "b"]) == {"n": 0}


def test_bootstrap_interval_is_seeded():
    rng = np.random.default_rng(0)
    y_true = rng.choice(CLASSES, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    first = metrics.bootstrap_ci(y_true, proba, CLASSES, n_resamples=200, seed=7)
    again = metrics.bootstrap_ci(y_true, proba, CLASSES, n_resamples=200, seed=7)
    other = metrics.bootstrap_ci(y_true, proba, CLASSES, n_resamples=200, seed=8)
    assert first == again and first != other
    point = metrics.split_metrics(y_true, proba, CLASSES)
    for name, (low, high) in first.items():
        assert low <= point[name] <= high


def test_binary_calibration_bins_the_positive_probability_not_the_arg_max():
    """Binary calibration: P(positive) against the fraction of positives, so a tuned threshold can't
    contradict it. Old rule (top-class confidence vs arg-max right) gives other bins and ECE here."""
    from sklearn.calibration import calibration_curve

    classes = ["benign", "malignant"]
    y_true = ["benign", "malignant", "benign", "benign", "malignant", "malignant", "malignant", "malignant"]
    p_pos = np.array([0.05, 0.25, 0.25, 0.25, 0.35, 0.75, 0.75, 0.75])
    ece, bins = metrics.expected_calibration_error(y_true, np.column_stack([1 - p_pos, p_pos]), classes)
    # (0,.1]: 1 row, mean .05, 0 positive -> gap .05; (.2,.3]: 3 rows, mean .25, 1/3 positive -> 1/12;
    # (.3,.4]: 1 row, mean .35, all positive -> .65; (.7,.8]: 3 rows, mean .75, all positive -> .25
    assert [b[0] for b in bins] == pytest.approx([0.0, 0.2, 0.3, 0.7]) and [b[2] for b in bins] == [1, 3, 1, 3]
    assert [b[3] for b in bins] == pytest.approx([0, 1 / 3, 1, 1])
    assert [b[4] for b in bins] == pytest.approx([0.05, 0.25, 0.35, 0.75])
    # the arg-max rule put .25 and .75 in one (.7,.8] bin (6 rows, 5 right): ECE (.05 + .5 + .65) / 8 = .15
    assert ece == pytest.approx((0.05 + 3 / 12 + 0.65 + 3 * 0.25) / 8)
    observed, predicted = calibration_curve(np.array(y_true) == "malignant", p_pos, n_bins=10)
    assert [b[3] for b in bins] == pytest.approx(observed) and [b[4] for b in bins] == pytest.approx(predicted)


def test_every_macro_average_is_over_the_classes_present():
    """Class d has no true rows but is predicted twice: left out of every macro average alike, and
    metrics.json says which classes were averaged."""
    classes = CLASSES + ["d"]
    proba = np.hstack([PROBA, np.zeros((6, 1))])
    y_pred = ["a", "d", "b", "b", "c", "d"]  # both mistakes now go to the absent class
    result = metrics.split_metrics(Y_TRUE, proba, classes, y_pred)
    assert result["macro_over"] == ["a", "b", "c"] and result["classes_absent"] == ["d"]
    # a, b, c: precision 1, 1, 1 (d's precision 0 would drag it to .75); recall 1/2, 1, 1/2
    assert result["macro_precision"] == pytest.approx(1.0)
    assert result["macro_recall"] == pytest.approx(2 / 3) == result["balanced_accuracy"]
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert result["roc_auc_macro"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert metrics.split_metrics(Y_TRUE, PROBA, CLASSES)["macro_over"] == CLASSES


def _sklearn_on_resample(y_true, proba, classes, y_pred):
    """The headline metrics of one resample the slow, obvious way."""
    from sklearn import metrics as skm

    present = sorted(set(y_true))
    auc = metrics.roc_auc(y_true, proba, classes)
    return {"accuracy": skm.accuracy_score(y_true, y_pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "macro_f1": skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
            "roc_auc_macro": np.nan if auc is None else auc}


@pytest.mark.parametrize("seed, n, classes", [(0, 12, ["a", "b", "c"]), (1, 7, ["x", "y"]), (2, 30, list("abcdefg")),
                                              (3, 5, list("abcd")), (4, 40, ["neg", "pos"]), (5, 3, ["a", "b"])])
@pytest.mark.parametrize("grouped", [False, True])
def test_vectorised_bootstrap_equals_scikit_learn_per_resample(seed, n, classes, grouped):
    """Rows or groups (each a few rows): the weighted chunked computation equals scikit-learn on each
    resample's rows written out (bootstrap.resample_rows: the drawn groups' rows concatenated)."""
    import warnings

    from image_learner.evaluation import bootstrap

    rng = np.random.default_rng(seed)
    y_true = rng.choice(classes, n)
    proba = rng.dirichlet(np.ones(len(classes)), n).round(1)  # rounded: many tied scores
    proba /= proba.sum(axis=1, keepdims=True)
    y_pred = (np.where(proba[:, 1] >= 0.3, classes[1], classes[0]) if len(classes) == 2
              else rng.choice(classes, n))  # binary: a tuned threshold; else: any labels, some absent ones
    groups = rng.integers(0, max(1, n // 3), n) if grouped else None
    values = metrics.bootstrap_samples(y_true, proba, classes, y_pred, n_resamples=60, seed=seed, groups=groups,
                                       max_cells=7 * n)  # chunks of 7 resamples: the chunking is checked too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r, picked in enumerate(bootstrap.resample_rows(n, groups, 60, seed)):
            expected = _sklearn_on_resample(y_true[picked], proba[picked], classes, y_pred[picked])
            for name, value in expected.items():
                assert values[name][r] == pytest.approx(value, abs=1e-12, nan_ok=True), (name, r)


def test_bootstrap_draws_the_same_resamples_as_one_call_per_resample():
    """Same seed, same rows as the earlier loop that drew each resample with its own generator call."""
    from image_learner.evaluation import bootstrap

    rng = np.random.default_rng(11)
    expected = [rng.integers(0, 9, 9) for _ in range(25)]
    assert np.array_equal(np.array(list(bootstrap.resample_rows(9, None, 25, 11))), np.array(expected))


def test_bootstrap_skips_undefined_resamples():
    """Two rows of one class and one of another: many resamples hold one class only; ROC-AUC skips
    them (NaN there, interval from the rest), the counting metrics never do."""
    from image_learner.evaluation import bootstrap

    classes = ["a", "b"]
    proba = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    values = metrics.bootstrap_samples(["a", "a", "b"], proba, classes, n_resamples=200, seed=3)
    drawn = bootstrap.resample_rows(3, None, 200, 3)
    one_class = np.array([len(set(np.array(["a", "a", "b"])[r])) == 1 for r in drawn])
    assert one_class.any() and not one_class.all()
    assert np.array_equal(np.isnan(values["roc_auc_macro"]), one_class)
    assert not np.isnan(values["accuracy"]).any()
    assert metrics.bootstrap_ci(["a", "a"], proba[:2], classes)["roc_auc_macro"] is None  # never defined
    assert all(v is None for v in metrics.bootstrap_ci([], np.zeros((0, 2)), classes).values())


# Five positives at P = .1 .3 .6 .7 .9, three negatives at .4 .5 .8. Worked by hand (threshold t: P >= t is positive):
#   t=.9: TP1 FP0 FN4 TN3 -> J = 1/5 = .200, F1 = 2/6 = .333, MCC = 3/sqrt(1*5*3*7) = .293
#   t=.6: TP3 FP1 FN2 TN2 -> J = 3/5 - 1/3 = .267, F1 = 6/9 = .667, MCC = 4/sqrt(4*5*3*4) = .258
#   t=.1: TP5 FP3 FN0 TN0 -> J = 0, F1 = 10/13 = .769, MCC undefined -> 0
# and every other cut scores lower on each: Youden picks .6, F1 .1 (rare negatives), MCC .9.
POLICY_P = np.array([0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
POLICY_Y = np.array([True, True, False, False, True, True, False, True])


@pytest.mark.parametrize("policy, expected", [("youden", 0.6), ("balanced_accuracy", 0.6), ("f1", 0.1),
                                              ("mcc", 0.9)])
def test_threshold_policies_on_a_hand_worked_example(policy, expected):
    assert metrics.choose_threshold(POLICY_Y, POLICY_P, policy) == pytest.approx(expected)


def test_threshold_scores_match_scikit_learn():
    for policy, score in (("balanced_accuracy", skm.balanced_accuracy_score), ("f1", skm.f1_score),
                          ("mcc", skm.matthews_corrcoef)):
        candidates, scores = metrics.threshold_scores(POLICY_Y, POLICY_P, policy)
        assert list(candidates) == sorted(POLICY_P, reverse=True)
        assert scores == pytest.approx([score(POLICY_Y, POLICY_P >= t) for t in candidates])
    _, j = metrics.threshold_scores(POLICY_Y, POLICY_P, "youden")
    _, balanced = metrics.threshold_scores(POLICY_Y, POLICY_P, "balanced_accuracy")
    assert balanced == pytest.approx((1 + j) / 2)  # same ranking: youden and balanced_accuracy always agree


def test_threshold_ties_go_closest_to_one_half_then_higher():
    # J = .5 at both .8 and .4 -> .4 (closer to .5); J = .5 at both .6 and .4 -> .6 (as close, higher)
    assert metrics.choose_threshold([False, True, False, True], [0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.4)
    assert metrics.choose_threshold([False, True, False, True], [0.2, 0.4, 0.5, 0.6]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="threshold policy"):
        metrics.choose_threshold(POLICY_Y, POLICY_P, "accuracy")
