"""--subgroup-columns: slices, per-slice numbers equal to scikit-learn's, cluster-bootstrap intervals, flags;
bad values exit 2 before the images are unpacked; the columns never reach the model."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA
from image_learner.data.input_utils import read_output_csv
from image_learner.errors import InputError
from image_learner.evaluation import bootstrap, metrics, subgroups


def test_the_slicing_rule():
    labels, rule = subgroups.slice_labels(["female", " male", "", "female"])
    assert labels.tolist() == ["female", "male", "(missing)", "female"] and rule == {"kind": "categorical"}
    codes, rule = subgroups.slice_labels(["0", "1", "1", "0"])  # a code, not a number to bin
    assert codes.tolist() == ["0", "1", "1", "0"] and rule["kind"] == "categorical"
    ages = [str(a) for a in range(0, 85, 5)] + [""]  # 17 distinct numbers and a missing one
    labels, rule = subgroups.slice_labels(ages)
    assert rule["edges"] == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert labels.tolist()[:6] == ["[0, 20)"] * 4 + ["[20, 40)"] * 2
    assert labels[-2] == "[60, 80]" and labels[-1] == "(missing)"  # the last bin closed


def _table(seed=0, n=160, classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    true = rng.choice(classes, n)
    logits = rng.normal(size=(n, len(classes))) + 1.5 * (np.asarray(classes)[None, :] == true[:, None])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = pd.DataFrame({"split": "test", "true_label": true,
                          "predicted_label": np.asarray(classes)[proba.argmax(axis=1)],
                          "sample_id": [f"s{i // 2}" for i in range(n)], "duplicate_group": np.arange(n)})
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = proba[:, k]
    table["subgroup_site"] = rng.choice(["arm", "back", "face"], n)
    return table


def _sklearn_ece_binary(is_positive, p):
    """ECE from scikit-learn's calibration_curve (10 uniform bins) weighted by the bins' rows."""
    observed, predicted = calibration_curve(is_positive, p, n_bins=10, strategy="uniform")
    counts = np.bincount(np.clip(np.digitize(p, np.linspace(0, 1, 11)[1:-1], right=True), 0, 9), minlength=10)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(observed - predicted)) / len(p))


@pytest.mark.parametrize("classes", [("a", "b", "c"), ("neg", "pos")])
def test_slice_numbers_equal_scikit_learns(classes):
    table = _table(classes=classes)
    if len(classes) == 2:  # a binary task's labels come from a threshold, not the arg-max
        table["predicted_label"] = np.where(table["prob_pos"] >= 0.3, "pos", "neg")
    found = subgroups.subgroup_report(table, ["site"], {}, "multiclass" if len(classes) > 2 else "binary",
                                      list(classes), seed=7)
    assert found["overall"]["n_images"] == 160 and found["overall"]["n_groups"] == 80
    for entry in found["columns"][0]["slices"]:
        part = table[table["subgroup_site"] == entry["slice"]]
        proba = part[[f"prob_{c}" for c in classes]].to_numpy()
        assert entry["n_images"] == len(part)
        assert entry["n_groups"] == part["sample_id"].nunique()
        assert entry["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(part["true_label"],
                                                                                       part["predicted_label"]))
        if len(classes) == 2:
            is_pos = part["true_label"].to_numpy() == "pos"
            assert entry["roc_auc"] == pytest.approx(skm.roc_auc_score(is_pos, proba[:, 1]))
            assert entry["expected_calibration_error"] == pytest.approx(_sklearn_ece_binary(is_pos, proba[:, 1]))
        else:
            assert entry["roc_auc"] == pytest.approx(skm.roc_auc_score(part["true_label"], proba, multi_class="ovr",
                                                                       labels=list(classes)))
            top, right = proba.max(axis=1), np.asarray(classes)[proba.argmax(axis=1)] == part["true_label"].to_numpy()
            assert entry["expected_calibration_error"] == pytest.approx(_sklearn_ece_binary(right, top))
        # the intervals: the cluster bootstrap of metrics.py on the slice's rows, same seed
        expected = metrics.bootstrap_ci(part["true_label"], proba, list(classes), part["predicted_label"],
                                        ("balanced_accuracy", "roc_auc_macro"), seed=7,
                                        groups=bootstrap.cluster_ids(part))
        assert entry["ci95"]["balanced_accuracy"] == expected["balanced_accuracy"]
        assert entry["ci95"]["roc_auc"] == expected["roc_auc_macro"]


def test_the_ece_bootstrap_equals_scoring_each_resample_explicitly():
    table = _table(seed=3, n=40)
    classes = ["a", "b", "c"]
    proba = table[[f"prob_{c}" for c in classes]].to_numpy()
    groups = bootstrap.cluster_ids(table)
    weighted = np.concatenate([subgroups.weighted_ece(table["true_label"], proba, classes, w)
                               for w in bootstrap.resample_weights(40, groups, 30, 5, max_cells=200)])
    explicit = [metrics.expected_calibration_error(table["true_label"].to_numpy()[rows], proba[rows], classes)[0]
                for rows in bootstrap.resample_rows(40, groups, 30, 5)]
    np.testing.assert_allclose(weighted, explicit, rtol=1e-12)


def test_a_slice_whose_interval_lies_below_the_overall_number_is_flagged():
    table = _table(seed=1, n=300)
    bad = table["subgroup_site"] == "face"  # this slice's predictions are made wrong
    wrong = {"a": "b", "b": "c", "c": "a"}
    table.loc[bad, "predicted_label"] = table.loc[bad, "true_label"].map(wrong)
    found = subgroups.subgroup_report(table, ["site"], {}, "multiclass", ["a", "b", "c"])
    flags = {s["slice"]: s["worse_than_overall"] for s in found["columns"][0]["slices"]}
    assert "balanced_accuracy" in flags["face"]
    assert flags["arm"] == [] and flags["back"] == []
    assert all("expected_calibration_error" not in f for f in flags.values())  # never flagged (biased upward)


def test_regression_slices_carry_the_mae_and_its_interval():
    rng = np.random.default_rng(0)
    true = rng.normal(50, 10, 200)
    table = pd.DataFrame({"split": "test", "true_value": true, "predicted_value": true + rng.normal(0, 2, 200),
                          "duplicate_group": np.arange(200), "subgroup_sex": rng.choice(["f", "m"], 200)})
    table.loc[table["subgroup_sex"] == "m", "predicted_value"] += 8  # a biased slice
    found = subgroups.subgroup_report(table, ["sex"], {}, "regression", [])
    by = {s["slice"]: s for s in found["columns"][0]["slices"]}
    male = table[table["subgroup_sex"] == "m"]
    assert by["m"]["mae"] == pytest.approx(skm.mean_absolute_error(male["true_value"], male["predicted_value"]))
    assert by["m"]["worse_than_overall"] == ["mae"] and by["f"]["worse_than_overall"] == []
    assert by["m"]["ci95"]["mae"][0] > found["overall"]["mae"]


def test_small_slices_get_numbers_but_no_interval():
    table = _table(n=60)
    table["subgroup_site"] = ["rare"] * 5 + ["common"] * 55
    slices = {s["slice"]: s for s in subgroups.subgroup_report(table, ["site"], {}, "multiclass",
                                                                ["a", "b", "c"])["columns"][0]["slices"]}
    assert slices["rare"]["n_images"] == 5 and slices["rare"]["ci95"] is None
    assert slices["rare"]["balanced_accuracy"] is not None and slices["common"]["ci95"] is not None


def test_spec_and_column_resolution():
    raw = pd.DataFrame(columns=["image_path", "label", "Sex", "age"])
    assert subgroups.parse_spec(" sex, 4 ") == ("sex", "4")
    assert subgroups.parse_spec("") == ()
    assert subgroups.resolve_columns(raw, ("sex", "4"), "label", "image_path") == ("Sex", "age")
    for names, message in ((("label",), "is the label column"), (("1",), "is the image column"),
                           (("sex", "3"), "twice"), (("weight",), "not in the CSV")):
        with pytest.raises(InputError, match=message):
            subgroups.resolve_columns(raw, names, "label", "image_path")
    with pytest.raises(InputError, match="empty column name"):
        subgroups.parse_spec("sex,,age")


def _subgroup_csv(path):
    table = pd.read_csv(DEMO_CSV).merge(pd.read_csv(os.path.join(TEST_DATA, "ham10000_demo_age.csv"))[
        ["image_path", "age"]], on="image_path")
    table["sex"] = ["female" if int(lesion[-1]) % 2 else "male" for lesion in table["lesion_id"]]
    table.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("value, message", [
    ("site", "subgroup column 'site' (--subgroup-columns) is not in the CSV"),
    ("label", "--subgroup-columns: 'label' is the label column"),
    ("sex,,age", "--subgroup-columns 'sex,,age' has an empty column name"),
])
def test_bad_subgroup_columns_exit_2_before_the_images_are_unpacked(tmp_path, capsys, value, message):
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", _subgroup_csv(tmp_path / "meta.csv"), "--image-zip",
                                   str(tmp_path / "no_such.zip"), "--output-dir", str(out),
                                   "--subgroup-columns", value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not out.exists() or os.listdir(out) == []


def test_training_reports_subgroups_that_recompute_from_predictions_csv(tmp_path):
    out = tmp_path / "out"
    assert image_learner_cli.main([
        "--csv-file", _subgroup_csv(tmp_path / "meta.csv"), "--image-zip", DEMO_ZIP, "--output-dir", str(out),
        "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1", "--sample-id-column", "lesion_id",
        "--subgroup-columns", "sex,AGE"]) == 0
    found = json.loads((out / "metrics.json").read_text())["subgroups"]
    assert [c["column"] for c in found["columns"]] == ["sex", "age"] and found["rows"] == "test split"
    predictions = read_output_csv(str(out / "predictions.csv"))
    classes = [c[5:] for c in predictions.columns if c.startswith("prob_")]
    test = predictions[predictions["split"] == "test"]
    for column in found["columns"]:
        assert sum(s["n_images"] for s in column["slices"]) == len(test)
        for entry in column["slices"]:
            part = test[test["subgroup_" + column["column"]].astype(str) == entry["slice"]]
            assert entry["balanced_accuracy"] == pytest.approx(
                skm.balanced_accuracy_score(part["true_label"], part["predicted_label"]))
            assert entry["roc_auc"] == pytest.approx(metrics.roc_auc(part["true_label"],
                                                                     part[[f"prob_{c}" for c in classes]], classes))
    assert set(predictions["subgroup_age"]) <= set(found["columns"][1]["order"])
    # the columns never reach the model: Ludwig's config has the image as its only input
    for config in (yaml.safe_load((out / "config.yaml").read_text()),
                   json.loads((out / "model" / "model_hyperparameters.json").read_text())):
        assert [f["name"] for f in config["input_features"]] == ["image_path"]
        assert [f["name"] for f in config["output_features"]] == ["label"]
    metadata = json.loads((out / "model" / "training_set_metadata.json").read_text())
    assert not {"sex", "age", "subgroup_sex", "subgroup_age"} & set(metadata)
    report = (out / "report.html").read_text()
    assert 'id="subgroups"' in report and 'id="plot-subgroups"' in report


def test_each_slice_carries_the_coverage_of_its_prediction_sets():
    """With conformal sets in predictions.csv, a slice's coverage is the share of its rows whose true label is
    in the set (here: one slice always covered, one half covered), flagged when wholly below the overall share."""
    from image_learner.evaluation import subgroups

    n = 40
    classes = ["a", "b"]
    true = np.array(["a", "b"] * (n // 2))
    table = pd.DataFrame({"split": "test", "true_label": true, "predicted_label": true,
                          "prob_a": np.where(true == "a", 0.8, 0.2), "prob_b": np.where(true == "a", 0.2, 0.8),
                          "sample_id": [f"s{k}" for k in range(n)], "duplicate_group": np.arange(n),
                          "subgroup_site": ["face"] * (n // 2) + ["back"] * (n // 2)})
    covered = np.r_[np.ones(n // 2, bool), np.arange(n // 2) % 2 == 0]  # face: all; back: every other row
    table["prediction_set"] = np.where(covered, true, np.where(true == "a", "b", "a"))
    table["set_size"] = 1
    report = subgroups.subgroup_report(table, ["site"], {}, "binary", classes, seed=3)
    assert report["overall"]["coverage"] == pytest.approx(covered.mean())
    slices = {s["slice"]: s for s in report["columns"][0]["slices"]}
    assert slices["face"]["coverage"] == 1.0 and slices["back"]["coverage"] == 0.5
    low, high = slices["back"]["ci95"]["coverage"]
    assert low < 0.5 < high and high < covered.mean()
    assert "coverage" in slices["back"]["worse_than_overall"] and "coverage" not in slices["face"]["worse_than_overall"]
