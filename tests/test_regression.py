"""Regression end to end: age from the demo images (test-data/ham10000_demo_age.csv, grouped by lesion), a
tiny backbone for one epoch; its model predicts `predicted_value` in years; wrong options exit 2."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA

AGE_CSV = os.path.join(TEST_DATA, "ham10000_demo_age.csv")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("regression") / "train"
    assert image_learner_cli.main(["--csv-file", AGE_CSV, "--target-column", "age", "--sample-id-column",
                                   "lesion_id", "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY]) == 0
    return out


def test_age_is_detected_as_regression_and_predicted_in_years(trained):
    summary = json.loads((trained / "run_summary.json").read_text())
    assert summary["task"] == "regression" and summary["classes"] == [] and summary["threshold"] is None
    assert "numeric with 15 distinct values" in summary["task_reason"]
    assert summary["target_column"] == "age"
    assert summary["split"]["method"].startswith("random, stratified by 5 quantile bin(s) of the target")
    assert summary["training"]["best_epoch_chosen_by"] == "lowest validation mean absolute error"
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["image", "image_file", "split", "true_value", "predicted_value",
                                         "sample_id", "duplicate_group", "interval_low", "interval_high"]
    ages = pd.read_csv(AGE_CSV).set_index("image_path")["age"]
    np.testing.assert_array_equal(predictions["true_value"], ages[predictions["image"]].to_numpy(float))
    train = predictions[predictions["split"] == "train"]
    scaling = summary["target_scaling"]
    assert scaling["mean"] == pytest.approx(train["true_value"].mean())  # training rows only
    assert scaling["std"] == pytest.approx(train["true_value"].std(ddof=0))
    # back in years, not z-scores: near the training mean after one epoch
    assert abs(predictions["predicted_value"].mean() - scaling["mean"]) < 2 * scaling["std"]
    # lesions stay whole, and every split gets young and old patients
    assert (predictions.groupby("sample_id")["split"].nunique() == 1).all()
    for split in ("train", "validation", "test"):
        values = predictions.loc[predictions["split"] == split, "true_value"]
        assert values.min() <= 45 and values.max() >= 65, split


def test_metrics_and_history_are_in_the_targets_unit(trained):
    found = json.loads((trained / "metrics.json").read_text())
    predictions = pd.read_csv(trained / "predictions.csv")
    history = pd.read_csv(trained / "training_history.csv")
    for split in ("train", "validation", "test"):
        part = predictions[predictions["split"] == split]
        mae = float(np.abs(part["predicted_value"] - part["true_value"]).mean())
        assert found[split]["n"] == len(part) and found[split]["mae"] == pytest.approx(mae)
    # Ludwig trained on z-scores; its per-epoch errors are put back into years (same model, same rows)
    assert history["validation_mean_absolute_error"].iloc[-1] == pytest.approx(found["validation"]["mae"], rel=1e-3)
    assert not any("percentage" in c for c in history.columns)
    assert (trained / "report.html").exists()


def test_its_model_predicts_values_and_evaluates_with_the_target(trained, tmp_path):
    manifest = json.loads((trained / "model" / "image_learner.json").read_text())
    assert (manifest["task"], manifest["classes"], manifest["label_vocabulary"], manifest["threshold"]) == (
        "regression", [], None, None)
    assert image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", AGE_CSV, "--target-column", "age",
                                   "--output-dir", str(tmp_path / "p")]) == 0
    after = pd.read_csv(tmp_path / "p" / "predictions.csv")
    before = pd.read_csv(trained / "predictions.csv")
    assert list(after.columns) == ["image", "image_file", "true_value", "predicted_value", "interval_low",
                                   "interval_high"]
    np.testing.assert_allclose(after[["interval_low", "interval_high"]], before[["interval_low", "interval_high"]],
                               atol=1e-3)
    assert after["image"].tolist() == before["image"].tolist()
    np.testing.assert_allclose(after["predicted_value"], before["predicted_value"], atol=1e-3)
    found = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert found["test"]["n"] == 140
    assert image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "q")]) == 0
    assert list(pd.read_csv(tmp_path / "q" / "predictions.csv").columns) == ["image", "image_file",
                                                                             "predicted_value", "interval_low",
                                                                             "interval_high"]


def test_a_non_numeric_target_in_the_prediction_csv_is_refused(trained, tmp_path, capsys):
    table = pd.read_csv(AGE_CSV).astype({"age": object})
    table.loc[3, "age"] = "unknown"
    table.to_csv(tmp_path / "ages.csv", index=False)
    code = image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", str(tmp_path / "ages.csv"), "--target-column", "age",
                                   "--output-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "'unknown'" in err and "CSV lines 5" in err and "Traceback" not in err


@pytest.mark.parametrize("csv, extra, message", [
    (DEMO_CSV, ["--task", "regression"], "--task regression needs a number in every row of label column 'label'"),
    (AGE_CSV, ["--target-column", "age", "--class-weights", "balanced"],
     "--class-weights balanced is for classification"),
    (AGE_CSV, ["--target-column", "age", "--positive-label", "55"], "--positive-label is for binary tasks"),
    (AGE_CSV, ["--target-column", "age", "--task", "binary"], "--task binary needs exactly two labels"),
])
def test_a_task_that_does_not_fit_is_refused(tmp_path, capsys, csv, extra, message):
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   *extra])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not out.exists() or os.listdir(out) == []


def test_the_regression_config_and_the_kept_epoch():
    from image_learner.training import ludwig_config
    from image_learner.training import ludwig_trainer
    from image_learner.errors import InputError

    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=32)
    config = ludwig_config.build_ludwig_config(options, "regression")
    assert config["output_features"] == [{"name": "label", "type": "number", "preprocessing": {"normalization": None},
                                          "loss": {"type": "mean_squared_error"}}]
    assert config["trainer"]["validation_metric"] == "mean_absolute_error"
    options.class_weights = "balanced"
    with pytest.raises(InputError, match="classification"):
        ludwig_config.build_ludwig_config(options, "regression")
    # lower is better: the kept epoch is the one of least validation error (first on ties)
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "validation_mean_absolute_error": [5.0, 3.0, 4.0, 3.0]})
    assert ludwig_trainer.best_epoch_of(history, "regression", "mae") == 2
    # Ludwig's errors on the z-scored target come back in the target's unit; percentage errors are dropped
    stats = {"training": {"label": {"mean_absolute_error": [0.5], "loss": [0.25], "r2": [0.1],
                                    "mean_absolute_percentage_error": [3.0]}}}
    table = ludwig_trainer.history_table(stats, "regression", target_std=10.0)
    assert table.to_dict("list") == {"epoch": [1], "train_mean_absolute_error": [5.0], "train_loss": [25.0],
                                     "train_r2": [0.1]}
