"""Issue 23 (1-3): temperature scaling, conformal prediction sets and intervals, abstention.

The pure functions are checked where the answer is known (a temperature that generated the labels,
coverage of a perfectly calibrated synthetic model); training, the manifest and predict once on the
bundled demo set with timm's tiny test model."""

import json
import math
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA, make_zip
from image_learner.evaluation import calibration
from image_learner.evaluation import conformal
from image_learner.evaluation import trust


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _draw(rng, n, k, temperature):
    """Raw probabilities softmax(z) whose labels were drawn from softmax(z / temperature)."""
    z = rng.normal(0, 3, size=(n, k))
    truth = _softmax(z / temperature)
    labels = np.array([rng.choice(k, p=p) for p in truth])
    return _softmax(z), labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_the_temperature_that_made_the_labels(true_t):
    raw, labels = _draw(np.random.default_rng(0), 4000, 5, true_t)
    fitted = calibration.fit_temperature(raw, labels)
    assert abs(fitted - true_t) / true_t < 0.12, fitted
    # the fit minimises NLL: nudging T either way is worse
    nll = lambda t: calibration.negative_log_likelihood(calibration.apply_temperature(raw, t), labels)
    assert nll(fitted) <= min(nll(fitted * 1.1), nll(fitted / 1.1))


def test_temperature_keeps_every_argmax_and_the_binary_order():
    rng = np.random.default_rng(1)
    raw = rng.dirichlet(np.ones(6) * 0.3, size=500)
    for t in (0.05, 0.3, 1.7, 20.0):
        scaled = calibration.apply_temperature(raw, t)
        assert (scaled.argmax(1) == raw.argmax(1)).all()
        np.testing.assert_allclose(scaled.sum(1), 1.0)
    p = rng.uniform(size=300)
    binary = np.column_stack([1 - p, p])
    scaled = calibration.apply_temperature(binary, 2.0)[:, 1]
    assert (np.argsort(scaled, kind="stable") == np.argsort(p, kind="stable")).all()
    # the closed form for two classes: sigmoid(logit(p) / T), and T = 1 changes nothing
    np.testing.assert_allclose(scaled, 1 / (1 + np.exp(-np.log(p / (1 - p)) / 2.0)), rtol=1e-9)
    np.testing.assert_allclose(calibration.apply_temperature(raw, 1.0), raw, atol=1e-12)
    # the inverse used by the report: softmax(T log p') gives the model's probabilities back
    np.testing.assert_allclose(calibration.apply_temperature(calibration.apply_temperature(raw, 3.0), 1 / 3.0), raw,
                               atol=1e-9)


def test_overconfident_probabilities_get_a_lower_ece_after_scaling():
    raw, labels = _draw(np.random.default_rng(2), 3000, 4, 3.0)  # the model is 3x too sharp
    classes = ["a", "b", "c", "d"]
    names = np.asarray(classes)[labels]
    t = calibration.fit_temperature(raw[:1500], labels[:1500])
    effect = calibration.before_after(names[1500:], raw[1500:], calibration.apply_temperature(raw[1500:], t), classes)
    assert effect["ece_after"] < effect["ece_before"] / 2
    assert effect["log_loss_after"] < effect["log_loss_before"]
    assert effect["argmax_unchanged"] == 1.0


def test_aps_scores_and_sets_by_hand():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    np.testing.assert_allclose(conformal.class_scores(proba), [[0.0, 0.8, 1.0], [1.0, 0.0, 0.9]])
    sets = conformal.prediction_sets(proba, 0.9)
    assert sets.tolist() == [[True, True, False], [False, True, True]]
    assert conformal.set_labels(sets, proba, ["x", "y", "z"]) == ["x|y", "y|z"]
    assert conformal.set_labels(sets, proba, ["x|1", "y", "z"]) == ['["x|1", "y"]', '["y", "z"]']
    # the ceil((n + 1) * coverage)-th smallest score: n = 9, coverage 0.8 -> the 8th
    assert conformal.conformal_quantile(np.arange(9) / 10, 0.8) == 0.7
    assert conformal.conformal_quantile(np.arange(8) / 10, 0.9) is None  # needs 9 rows
    assert conformal.minimum_rows(0.9) == 9 and conformal.conformal_quantile(np.arange(9) / 10, 0.9) == 0.8


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_conformal_sets_cover_as_promised_on_a_known_model(target):
    """A perfectly calibrated model (labels drawn from its own Dirichlet probabilities): 2,000 calibration
    and 2,000 test draws, 10 seeds; mean empirical coverage within 2 points of the target, and the sets
    adapt (flatter probabilities, larger sets)."""
    coverages, flat_sizes, sharp_sizes = [], [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        proba = rng.dirichlet(np.full(7, 0.4), size=4000)
        labels = np.array([rng.choice(7, p=p) for p in proba])
        q = conformal.conformal_quantile(conformal.true_class_scores(proba[:2000], labels[:2000]), target)
        sets = conformal.prediction_sets(proba[2000:], q)
        coverages.append(sets[np.arange(2000), labels[2000:]].mean())
        top = proba[2000:].max(1)
        flat_sizes.append(sets.sum(1)[top < 0.5].mean())
        sharp_sizes.append(sets.sum(1)[top > 0.8].mean())
    assert abs(np.mean(coverages) - target) < 0.02, coverages
    assert np.mean(flat_sizes) > np.mean(sharp_sizes) + 1


def test_regression_intervals_cover_as_promised():
    rng = np.random.default_rng(3)
    predicted = rng.normal(50, 10, 6000)
    truth = predicted + rng.standard_t(4, 6000) * 3
    q = conformal.conformal_quantile(np.abs(truth[:3000] - predicted[:3000]), 0.9)
    low, high = conformal.intervals(predicted[3000:], q)
    assert abs(np.mean((truth[3000:] >= low) & (truth[3000:] <= high)) - 0.9) < 0.02


def test_risk_coverage_by_hand():
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, False, True, False])
    curve = conformal.risk_coverage(confidence, correct, points=4)
    assert [(p["kept"], p["error_rate"]) for p in curve] == [(1, 0.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    assert conformal.kept_rows(confidence, 0.5).tolist() == [True, True, False, False]


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "x"])
def test_bad_coverage_values_are_refused(value):
    with pytest.raises(ValueError, match="--coverage"):
        trust.check_coverage(value)
    assert trust.check_coverage(0) == 0 and trust.check_coverage("0.9") == 0.9


def test_a_bad_coverage_on_the_command_line_exits_2(tmp_path, capsys):
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "o"), "--coverage", "1.2", "--model-name", "test_efficientnet"])
    assert code == 2 and "--coverage must be 0 (off) or between 0 and 1" in capsys.readouterr().err


def test_the_coverage_summary_uses_the_grouped_bootstrap():
    """Coverage's interval is metrics.bootstrap_ci of "covered": two images of one lesion are drawn together."""
    table = pd.DataFrame({"split": "test", "true_label": ["a", "b", "a", "b"] * 10,
                          "predicted_label": ["a", "a", "a", "b"] * 10,
                          "prob_a": [0.7, 0.6, 0.8, 0.3] * 10, "prob_b": [0.3, 0.4, 0.2, 0.7] * 10,
                          "prediction_set": ["a", "a|b", "a", "b"] * 10, "set_size": [1, 2, 1, 1] * 10,
                          "sample_id": np.repeat(np.arange(20), 2), "duplicate_group": np.arange(40)})
    record = {"temperature": 1.0, "calibrated_on": "validation split", "calibration_rows": 10, "coverage": 0.9,
              "conformal_score": "aps", "conformal_quantile": 0.5}
    found = trust.summary(table, "binary", ["a", "b"], record)
    cover = found["coverage_test"]
    assert cover["empirical"] == 1.0 and cover["ci95_basis"]["groups"] == 20
    assert cover["mean_set_size_per_class"] == {"a": 1.0, "b": 1.5}
    assert cover["set_size_histogram"] == {1: 30, 2: 10}
    assert found["calibration_test"]["argmax_unchanged"] == 1.0


# ---- training, manifest and predict, on the bundled demo set with the tiny test model -------------------

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "train"
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, "--coverage", "0.8"]) == 0
    return out


def test_training_writes_calibrated_probabilities_sets_and_the_record(trained):
    table = pd.read_csv(trained / "predictions.csv")
    with zipfile.ZipFile(trained / "trained_model.zip") as archive:
        manifest = json.loads(archive.read("model/image_learner.json"))
    record = manifest["trust"]
    assert record["calibrated_on"] == "validation split"
    assert record["calibration_rows"] == int((table["split"] == "validation").sum())
    classes = manifest["classes"]
    proba = table[[f"prob_{c}" for c in classes]].to_numpy()
    validation = (table["split"] == "validation").to_numpy()
    index = calibration.class_index(table.loc[validation, "true_label"], classes)
    # the recorded T is the fit on the validation rows of the model's own probabilities
    raw = calibration.apply_temperature(proba, 1 / record["temperature"])
    assert record["temperature"] == pytest.approx(calibration.fit_temperature(raw[validation], index), rel=1e-3)
    # the quantile is the conformal one of those rows' scaled probabilities, and it makes the sets
    scores = conformal.true_class_scores(proba[validation], index)
    assert record["conformal_quantile"] == pytest.approx(conformal.conformal_quantile(scores, 0.8))
    sizes = conformal.prediction_sets(proba, record["conformal_quantile"]).sum(1)
    assert (table["set_size"].to_numpy() == sizes).all()
    assert (table["prediction_set"].str.split("|").str[0] == table["predicted_label"]).all()
    found = json.loads((trained / "metrics.json").read_text())["trust"]
    assert found["coverage"] == 0.8 and "ci95" in found["coverage_test"]
    assert found["calibration_test"]["argmax_unchanged"] == 1.0
    report = (trained / "report.html").read_text()
    assert "How far to trust each prediction" in report and "plot-risk-coverage" in report


def _tampered(trained, tmp_path, field, value):
    with zipfile.ZipFile(trained / "trained_model.zip") as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    manifest = json.loads(members["model/image_learner.json"])
    manifest["trust"][field] = value
    members["model/image_learner.json"] = json.dumps(manifest).encode()
    return make_zip(tmp_path / "model.zip", members)


@pytest.mark.parametrize("field, value", [
    ("temperature", float("nan")), ("temperature", -1.0), ("temperature", 0), ("temperature", 1e9),
    ("temperature", None), ("conformal_quantile", float("nan")), ("conformal_quantile", -0.5),
    ("conformal_quantile", 1e9), ("coverage", 1.5), ("conformal_score", "evil")])
def test_a_tampered_trust_record_exits_2(trained, tmp_path, capsys, field, value):
    model = _tampered(trained, tmp_path, field, value)
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "image_learner.json: trust is" in err and "Traceback" not in err


def test_predict_applies_the_temperature_and_the_sets_and_abstains(trained, tmp_path):
    out = tmp_path / "p"
    assert image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", DEMO_CSV, "--output-dir", str(out),
                                   "--abstain-above-set-size", "2"]) == 0
    before = pd.read_csv(trained / "predictions.csv").set_index("image")
    after = pd.read_csv(out / "predictions.csv").set_index("image").loc[before.index]
    probs = [c for c in before.columns if c.startswith("prob_")]
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)
    assert (after["prediction_set"] == before["prediction_set"]).all()
    assert (after["abstain"] == (after["set_size"] > 2)).all()
    assert "trust" in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("k, message", [("0", "--abstain-above-set-size must be a whole number of at least 1"),
                                        ("-3", "--abstain-above-set-size must be a whole number of at least 1")])
def test_bad_abstain_values_exit_2(trained, tmp_path, capsys, k, message):
    code = image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "p"), "--abstain-above-set-size", k])
    assert code == 2 and message in capsys.readouterr().err


def test_abstaining_needs_a_model_with_sets(trained, tmp_path, capsys):
    model = _tampered(trained, tmp_path, "coverage", None)
    with zipfile.ZipFile(model) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    manifest = json.loads(members["model/image_learner.json"])
    manifest["trust"].update(conformal_score=None, conformal_quantile=None)
    members["model/image_learner.json"] = json.dumps(manifest).encode()
    code = image_learner_cli.main(["predict", "--model", make_zip(tmp_path / "m2.zip", members), "--image-zip",
                                   DEMO_ZIP, "--output-dir", str(tmp_path / "p"), "--abstain-above-set-size", "1"])
    assert code == 2 and "needs prediction sets" in capsys.readouterr().err


def test_the_regression_model_predicts_intervals(tmp_path):
    out = tmp_path / "p"
    assert image_learner_cli.main(["predict", "--model", os.path.join(TEST_DATA, "tiny_regression_model.zip"),
                                   "--image-zip", DEMO_ZIP, "--output-dir", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    with zipfile.ZipFile(os.path.join(TEST_DATA, "tiny_regression_model.zip")) as archive:
        q = json.loads(archive.read("model/image_learner.json"))["trust"]["conformal_quantile"]
    assert q > 0 and math.isfinite(q)
    np.testing.assert_allclose(table["interval_high"] - table["predicted_value"], q)
    np.testing.assert_allclose(table["predicted_value"] - table["interval_low"], q)


def test_cross_validation_calibrates_on_the_pooled_out_of_fold_rows_and_tunes_the_threshold_after(tmp_path):
    """Binary, 2 folds: T and the quantile are fitted on the out-of-fold rows; the delivered threshold is the
    Youden threshold of the scaled out-of-fold P(positive), and the held-out test rows are called by it."""
    from image_learner.evaluation import metrics

    out = tmp_path / "cv"
    assert image_learner_cli.main(["--csv-file", os.path.join(TEST_DATA, "ham10000_demo_binary.csv"), "--image-zip",
                                   DEMO_ZIP, "--output-dir", str(out), *TINY, "--cross-validation", "2",
                                   "--coverage", "0.8", "--no-report"]) == 0
    table = pd.read_csv(out / "predictions.csv")
    summary = json.loads((out / "run_summary.json").read_text())
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        manifest = json.loads(archive.read("model/image_learner.json"))
    record, classes = manifest["trust"], manifest["classes"]
    pooled = (table["split"] == "cross_validation").to_numpy()
    assert record["calibrated_on"] == "pooled out-of-fold predictions" and record["calibration_rows"] == pooled.sum()
    proba = table[[f"prob_{c}" for c in classes]].to_numpy()
    index = calibration.class_index(table["true_label"], classes)
    raw = calibration.apply_temperature(proba, 1 / record["temperature"])
    assert record["temperature"] == pytest.approx(calibration.fit_temperature(raw[pooled], index[pooled]), rel=1e-3)
    positive = (table["true_label"] == summary["positive_label"]).to_numpy()
    assert summary["threshold"] == pytest.approx(metrics.choose_threshold(positive[pooled], proba[pooled, 1]))
    test = ~pooled
    called = np.where(proba[test, 1] >= summary["threshold"], classes[1], classes[0])
    assert (table.loc[test, "predicted_label"].to_numpy() == called).all()
    assert "prediction_set" in table
