"""k-fold cross-validation: folds stratified and grouped (pure), the out-of-fold summary (pure), and one tiny
real run (test_efficientnet, 32 px, 1 epoch, 3 folds on the demo set) with its outputs and the delivered model."""

import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_learner.training import cross_validation
import image_learner_cli
import split_utils
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA
from image_learner.errors import InputError


def _dataset(seed=0, n_groups=60):
    """Groups of 1-3 rows, labels a/b/c (a group shares its label), unbalanced classes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    group_labels = rng.choice(["a", "b", "c"], n_groups, p=[0.6, 0.3, 0.1])
    group_labels[:15] = ["a", "b", "c"] * 5  # every class has at least 5 groups
    groups = np.repeat(np.arange(n_groups), sizes)
    return np.repeat(group_labels, sizes), groups


def test_folds_are_grouped_stratified_and_cover_every_row_once():
    labels, groups = _dataset()
    folds = split_utils.assign_folds(labels, groups, 5, seed=1)
    assert folds.shape == labels.shape and set(folds.tolist()) == {1, 2, 3, 4, 5}  # one fold per row
    assert pd.Series(folds).groupby(groups).nunique().max() == 1  # no group in two folds
    per_fold = pd.crosstab(labels, folds)
    for cls in per_fold.index:  # per class, folds differ by at most the largest group (3 rows)
        assert per_fold.loc[cls].min() >= 1
        assert per_fold.loc[cls].max() - per_fold.loc[cls].min() <= 3


def test_single_image_groups_give_folds_within_one_image_per_class():
    labels = np.array(["x"] * 23 + ["y"] * 11)
    folds = split_utils.assign_folds(labels, None, 4, seed=3)
    counts = pd.crosstab(labels, folds)
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1


def test_folds_are_reproducible_with_the_seed():
    labels, groups = _dataset()
    same = split_utils.assign_folds(labels, groups, 5, seed=7)
    assert (split_utils.assign_folds(labels, groups, 5, seed=7) == same).all()
    assert (split_utils.assign_folds(labels, groups, 5, seed=8) != same).any()


@pytest.mark.parametrize("k, message", [(1, "at least 2 folds"), (6, "--cross-validation 6 needs at least 6 groups")])
def test_too_many_folds_or_too_few_are_refused_naming_the_option(k, message):
    labels, groups = _dataset()
    with pytest.raises(InputError, match=message) as err:
        split_utils.assign_folds(labels[groups < 15], groups[groups < 15], k, seed=1)  # 5 groups per class
    if k == 6:
        assert "'c' has" in str(err.value) and "5 group(s)" in str(err.value)


def test_a_fold_without_a_class_is_refused():
    # "b" only inside three small groups of mostly "a": the big a-only group fills one fold, the three
    # (a, b) pairs go to the other two
    labels = np.array(["a"] * 12 + ["a", "b"] * 3)
    groups = np.array([0] * 6 + [1] * 3 + [2] * 3 + [3, 3, 4, 4, 5, 5])
    with pytest.raises(InputError, match="fold 1 has no 'b' image"):
        split_utils.assign_folds(labels, groups, 3, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), min_size=1, max_size=40),
       st.integers(2, 5), st.integers(0, 10 ** 6))
def test_property_folds_group_whole_every_row_once_or_a_clear_refusal(group_specs, k, seed):
    labels = np.concatenate([[label] * size for label, size in group_specs])
    groups = np.concatenate([[g] * size for g, (_, size) in enumerate(group_specs)])
    try:
        folds = split_utils.assign_folds(labels, groups, k, seed)
    except InputError as err:
        assert "--cross-validation" in str(err)
        return
    assert set(folds.tolist()) == set(range(1, k + 1))
    assert pd.Series(folds).groupby(groups).nunique().max() == 1
    assert pd.crosstab(labels, folds).min().min() >= 1  # every fold holds every class


def test_fold_rows_carve_validation_from_the_other_folds_only():
    labels, groups = _dataset()
    folds = split_utils.assign_folds(labels, groups, 4, seed=2)
    split = np.where(np.arange(len(labels)) % 17 == 0, 2, 0)  # some held-out test rows
    table = pd.DataFrame({"label": labels, "stratum": labels, "group": groups, "fold": np.where(split == 2, 0, folds),
                          "split": split})
    data = type("Data", (), {"table": table})()
    rows = cross_validation.fold_rows(data, 2, (0.7, 0.1, 0.2), seed=2)
    assert not (rows["fold"] == 2).any() and not (rows["fold"] == 0).any()  # neither the fold nor the test rows
    assert set(rows["split"]) == {0, 1}
    assert rows.groupby("group")["split"].nunique().max() == 1  # validation carved with groups whole


def test_final_epochs_is_the_median_kept_epoch_halves_up():
    assert cross_validation.final_epochs([3, 5, 4]) == 4
    assert cross_validation.final_epochs([3, 4]) == 4
    assert cross_validation.final_epochs([1, 1, 2, 9]) == 2


def test_summary_has_per_fold_mean_sd_and_pooled_intervals():
    from image_learner.evaluation import metrics

    rng = np.random.default_rng(0)
    n = 90
    true = rng.choice(["a", "b", "c"], n)
    proba = rng.dirichlet([1, 1, 1], n)
    table = pd.DataFrame({"split": "cross_validation", "fold": np.arange(n) % 3 + 1, "true_label": true,
                          "predicted_label": np.array(["a", "b", "c"])[proba.argmax(1)]})
    for k, c in enumerate("abc"):
        table[f"prob_{c}"] = proba[:, k]
    summary = cross_validation.summarise(table, lambda p, s: metrics.metrics_by_split(p, list("abc"), 1, s),
                                         [2, 3, 4])
    assert summary["k"] == 3 and [f["kept_epoch"] for f in summary["folds"]] == [2, 3, 4]
    accuracies = [f["balanced_accuracy"] for f in summary["folds"]]
    assert summary["mean"]["balanced_accuracy"] == pytest.approx(np.mean(accuracies))
    assert summary["sd"]["balanced_accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert summary["pooled"]["n"] == n and len(summary["pooled"]["ci95"]["balanced_accuracy"]) == 2


AGE_CSV = f"{TEST_DATA}/ham10000_demo_age.csv"
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--sample-id-column", "lesion_id", "--cross-validation", "3",
                                   "--class-decision", "balanced"]) == 0
    return out


def test_cross_validation_run_gives_every_image_one_out_of_fold_prediction(cv_run):
    predictions = pd.read_csv(cv_run / "predictions.csv")
    assert len(predictions) == 140 and predictions["image"].is_unique
    assert set(predictions["split"]) == {"cross_validation"} and set(predictions["fold"]) == {1, 2, 3}
    assert predictions.groupby("sample_id")["fold"].nunique().max() == 1  # lesions never straddle folds
    assert predictions.groupby("duplicate_group")["fold"].nunique().max() == 1
    assert predictions[[c for c in predictions if c.startswith("prob_")]].notna().all().all()
    summary = json.loads((cv_run / "run_summary.json").read_text())
    cv = summary["cross_validation"]
    assert cv["k"] == 3 and sum(f["predicted"] for f in cv["fold_sizes"]) == 140
    assert cv["final_epochs"] == 1 and summary["training"]["epochs_run"] == 1
    assert cv["final_training_rows"] == 140
    metrics_json = json.loads((cv_run / "metrics.json").read_text())
    assert [f["n"] for f in metrics_json["cross_validation"]["folds"]] == [f["predicted"] for f in cv["fold_sizes"]]
    assert {"mean", "sd", "pooled"} <= set(metrics_json["cross_validation"])
    assert metrics_json["cross_validation"]["pooled"]["ci95"]["balanced_accuracy"] is not None
    report = (cv_run / "report.html").read_text()
    assert 'id="cross-validation"' in report and "retrained on all 140 non-test images for 1 epoch" in report


def test_the_balanced_decision_is_tuned_per_fold_and_the_delivered_one_on_the_pooled_rows(cv_run):
    """--class-decision balanced with --cross-validation: each fold's alpha on its validation part (recorded
    per fold), the delivered model's on the pooled out-of-fold rows, its offsets alpha * log(class shares of
    those rows) in the model file."""
    from image_learner.evaluation import class_decision

    summary = json.loads((cv_run / "run_summary.json").read_text())
    decision, cv = summary["class_decision"], summary["cross_validation"]
    assert decision["chosen_on"] == "pooled out-of-fold rows" and decision["rows"] == 140
    assert decision["alpha"] in class_decision.ALPHAS
    assert len(cv["fold_decision_alphas"]) == 3 and set(cv["fold_decision_alphas"]) <= set(class_decision.ALPHAS)
    folds = json.loads((cv_run / "metrics.json").read_text())["cross_validation"]["folds"]
    assert [f["decision_alpha"] for f in folds] == cv["fold_decision_alphas"]
    predictions = pd.read_csv(cv_run / "predictions.csv")
    with zipfile.ZipFile(cv_run / "trained_model.zip") as archive:
        manifest = json.loads(archive.read("model/image_learner.json"))
    expected = decision["alpha"] * class_decision.log_priors(predictions["true_label"], manifest["classes"])
    np.testing.assert_allclose(manifest["class_offsets"], expected)
    assert manifest["training"]["options"]["class_decision"] == "balanced"
    report = (cv_run / "report.html").read_text()
    assert "pooled out-of-fold rows" in report and "each fold's own out-of-fold predictions used that" in report
    assert [p["alpha"] for p in decision["curve"]] == list(class_decision.ALPHAS)
    assert f"{decision['alpha']}: " in report and "(chosen)" in report  # the trade, every alpha tried
    log = (cv_run / "training_log.txt").read_text()
    for fold, alpha in enumerate(cv["fold_decision_alphas"], 1):  # each fold's choice is in the log too
        said = (f", alpha {alpha:g} chosen on the" if alpha else
                (", alpha 0 chosen on the", " kept the argmax: no alpha beat it beyond noise on the"))
        assert any(f"fold {fold} of 3: decision: balanced (logit adjustment){x}" in log
                   for x in ((said,) if alpha else said))
    # the delivered choice's gate: every alpha's paired gain bound recorded, the chosen one's above 0 (or the argmax)
    chosen = next(p for p in decision["curve"] if p["alpha"] == decision["alpha"])
    assert decision["alpha"] == 0 or chosen["gain_lower"] > 0
    assert decision["resamples"] == 1000 and decision["groups"] <= 140


def test_cross_validated_model_predicts(cv_run, tmp_path):
    assert image_learner_cli.main(["predict", "--model", str(cv_run / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "p")]) == 0
    assert len(pd.read_csv(tmp_path / "p" / "predictions.csv")) == 140


def test_a_regression_cross_validates_by_target_quantiles_and_its_model_predicts_values(tmp_path):
    """Age from the demo images, 2 folds: folds stratified by quantile bins of the target and grouped by
    lesion, one out-of-fold value per image in the target's unit, regression metrics per fold and pooled
    (with the median baseline), the report's cross-validation section, and a model that predicts values."""
    out = tmp_path / "run"
    # distinct ages (a hundredth per lesion): each fold's training median then differs from the all-rows one
    table = pd.read_csv(AGE_CSV)
    table["age"] = table["age"] + table["lesion_id"].rank(method="dense") / 100
    age_csv = tmp_path / "age.csv"
    table.to_csv(age_csv, index=False)
    assert image_learner_cli.main(["--csv-file", str(age_csv), "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--target-column", "age", "--sample-id-column", "lesion_id",
                                   "--cross-validation", "2"]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert {"true_value", "predicted_value", "fold"} <= set(predictions) and not any(
        c.startswith("prob_") for c in predictions)
    assert len(predictions) == 140 and set(predictions["fold"]) == {1, 2}
    assert predictions.groupby("sample_id")["fold"].nunique().max() == 1
    ages = pd.read_csv(age_csv).set_index("image_path")["age"]
    assert np.allclose(predictions.set_index("image")["true_value"], ages.loc[predictions["image"]].to_numpy())
    # both folds hold young and old patients: stratified by the target's quantiles, not by chance
    spread = predictions.groupby("fold")["true_value"].agg(["min", "max"])
    assert (spread["min"] <= ages.quantile(0.2)).all() and (spread["max"] >= ages.quantile(0.8)).all()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["task"] == "regression" and "quantile bins of the target" in summary["split"]["method"]
    cv = json.loads((out / "metrics.json").read_text())["cross_validation"]
    assert [f["n"] for f in cv["folds"]] == predictions["fold"].value_counts().sort_index().tolist()
    error = (predictions["predicted_value"] - predictions["true_value"]).abs()
    assert cv["pooled"]["mae"] == pytest.approx(error.mean())
    # each fold's baseline is the median of that fold's training rows (recomputed from split.csv), never of
    # every row, which would include the rows it scores
    split = pd.read_csv(out / "split.csv")
    table = split.assign(split=0, fold=split["fold"].astype(int),
                         stratum=split_utils.quantile_bins(split["label"].astype(float), split["group"]))
    medians = [float(np.median(cross_validation.fold_rows(SimpleNamespace(table=table), fold, (0.7, 0.1, 0.2), 42)
                               .query("split == 0")["label"])) for fold in (1, 2)]
    assert summary["cross_validation"]["fold_baselines"] == pytest.approx(medians)
    assert [f["baseline_median"] for f in cv["folds"]] == pytest.approx(medians)
    assert medians != [ages.median()] * 2  # the old all-rows median would fail the two lines above
    baseline = predictions["fold"].map({1: medians[0], 2: medians[1]})
    assert cv["pooled"]["baseline_median"] is None  # no one value: each row has its fold's
    assert cv["pooled"]["baseline_median_mae"] == pytest.approx((baseline - predictions["true_value"]).abs().mean())
    assert cv["pooled"]["ci95"]["mae"][0] <= cv["pooled"]["mae"] <= cv["pooled"]["ci95"]["mae"][1]
    assert cv["mean"]["mae"] == pytest.approx(np.mean([f["mae"] for f in cv["folds"]]))
    report = (out / "report.html").read_text()
    assert 'id="cross-validation"' in report and "Mean absolute error (MAE)" in report
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "p")]) == 0
    assert "predicted_value" in pd.read_csv(tmp_path / "p" / "predictions.csv")


def test_pooled_out_of_fold_intervals_resample_lesions_whole():
    """Two images per lesion in the out-of-fold rows: the pooled intervals rest on the lesions (45), and
    equal those of one image per lesion (the second image adds no information)."""
    from image_learner.evaluation import metrics

    rng = np.random.default_rng(1)
    n = 45
    true = rng.choice(["a", "b", "c"], n)
    proba = rng.dirichlet([1, 1, 1], n)
    once = pd.DataFrame({"split": "cross_validation", "fold": np.arange(n) % 3 + 1, "true_label": true,
                         "predicted_label": np.array(["a", "b", "c"])[proba.argmax(1)],
                         "sample_id": [f"lesion{i}" for i in range(n)], "duplicate_group": np.arange(n)})
    for k, c in enumerate("abc"):
        once[f"prob_{c}"] = proba[:, k]
    twice = pd.concat([once, once.assign(duplicate_group=once["duplicate_group"] + n)], ignore_index=True)

    def score(p, s):
        return metrics.metrics_by_split(p, list("abc"), 1, s)

    pooled = cross_validation.summarise(twice, score, [1, 1, 1])["pooled"]
    assert pooled["n"] == 2 * n and pooled["ci95_basis"]["groups"] == n
    single = cross_validation.summarise(once, score, [1, 1, 1])["pooled"]["ci95"]
    for name, interval in pooled["ci95"].items():
        assert interval == pytest.approx(single[name], abs=1e-12), name


def test_cross_validation_report_says_how_many_lesions_the_intervals_rest_on(cv_run):
    """The demo: 140 images, one original and one flip of each of 70 lesions."""
    pooled = json.loads((cv_run / "metrics.json").read_text())["cross_validation"]["pooled"]
    assert pooled["ci95_basis"]["rows"] == 140 and pooled["ci95_basis"]["groups"] == 70
    assert pooled["ci95_basis"]["grouped_by"] == ["sample id", "duplicate group"]
    report = " ".join((cv_run / "report.html").read_text().split())
    assert "95% intervals over 1,000 resamples of 70 groups of the 140 out-of-fold images" in report


def _fold_codes(labels, groups, warnings=None, **options):
    """folds.fold_codes on a table of ``labels`` and ``groups`` with a random split (no split column)."""
    from image_learner.data import dataset_prep, folds

    table = pd.DataFrame({"stratum": labels, "group": groups})
    info, warnings = {}, [] if warnings is None else warnings
    codes = folds.fold_codes(table, None, None, False, None, dataset_prep.DataOptions(**options), info, False,
                             warnings)
    return codes, table, info


def test_a_held_out_test_set_is_the_one_split_would_test_on_and_the_rest_forms_the_folds():
    labels, groups = _dataset()
    codes, table, info = _fold_codes(labels, groups, cross_validation=3, hold_out_test=True, random_seed=5)
    single = split_utils.random_split(labels, groups, (0.7, 0.1, 0.2), seed=5)
    assert ((codes == 2) == (single == 2)).all() and set(codes.tolist()) == {0, 2}
    assert (table["fold"][codes == 2] == 0).all() and set(table["fold"][codes == 0]) == {1, 2, 3}
    expected = split_utils.assign_folds(labels[codes == 0], groups[codes == 0], 3, seed=5)
    assert (table["fold"][codes == 0].to_numpy() == expected).all()  # the folds of the remaining rows
    assert "the test rows of the seeded random split (0.2 of the images" in info["method"] and info["folds"] == 3
    without, table, _ = _fold_codes(labels, groups, cross_validation=3, random_seed=5)
    assert (without == 0).all() and (table["fold"] > 0).all()  # the default: every row in a fold


def test_a_presets_folds_that_do_not_fit_give_one_split_with_a_warning_and_typed_ones_stop():
    labels, groups = _dataset()
    few = groups < 9  # 3 groups per class: too few for 4 folds
    warnings = []
    codes, table, info = _fold_codes(labels[few], groups[few], warnings, cross_validation=4, folds_optional=True)
    assert codes is None and "fold" not in table and "folds" not in info
    assert warnings == [f"the preset's 4-fold cross-validation does not fit this set (--cross-validation 4 needs at "
                        f"least 4 groups of every class{warnings[0].split('of every class', 1)[1]}"]
    assert warnings[0].endswith("): one train/validation/test split instead")
    with pytest.raises(InputError, match="--cross-validation 4 needs at least 4 groups"):
        _fold_codes(labels[few], groups[few], cross_validation=4)
