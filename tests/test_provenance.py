"""Threshold and kept-epoch provenance that is always true (issue 20, finding 4), task-dependent option
errors before any image is unpacked, and a diverged training as one line (finding 5).

Pure rules first, then tiny real runs (test_efficientnet, 32 px, 1-2 epochs) on the demo images."""

import contextlib
import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from image_learner.training import cross_validation
import image_learner_cli
from image_learner.evaluation import metrics
from image_learner import pipeline
from image_learner.data import task_choice
from image_learner.training import provenance
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA
from image_learner.errors import InputError

BINARY_CSV = os.path.join(TEST_DATA, "ham10000_demo_binary.csv")
AGE_CSV = os.path.join(TEST_DATA, "ham10000_demo_age.csv")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


# ------------------------------------------------------------------------------------------- pure rules

def test_choose_threshold_signals_when_it_could_not_tune():
    assert metrics.threshold_choice([], []) == (0.5, "no rows")
    assert metrics.threshold_choice([True, True], [0.2, 0.9]) == (0.5, "one class")
    assert metrics.threshold_choice([False, False], [0.2, 0.9]) == (0.5, "one class")
    value, problem = metrics.threshold_choice([False, True, False, True], [0.1, 0.7, 0.3, 0.9])
    assert problem is None and value == pytest.approx(0.7)


def test_threshold_provenance_says_tuned_only_when_it_was():
    def choice(labels, p, fixed=None):
        return provenance.threshold_choice(labels, p, "mel", "nv", fixed, "youden")

    empty = choice([], [])
    assert (empty.value, empty.provenance, empty.tuned) == (0.5, "not tuned: no validation rows, 0.5", False)
    assert "WARNING" not in empty.warning and "not tuned: no validation rows, 0.5" in empty.warning
    one = choice(["nv", "nv", "nv"], [0.1, 0.6, 0.4])
    assert one.provenance == "not tuned: validation rows hold one class ('nv', 3 rows), 0.5" and one.warning
    tuned = choice(["nv", "mel", "nv", "mel"], [0.1, 0.7, 0.3, 0.9])
    assert tuned.value == pytest.approx(0.7) and tuned.warning is None and tuned.tuned
    assert tuned.provenance == "tuned on the validation split (4 rows: 2 'mel', 2 'nv') for the highest Youden's J"
    fixed = choice(["nv"], [0.1], fixed=0.3)
    assert (fixed.value, fixed.provenance, fixed.warning) == (0.3, "fixed by --threshold", None)


def _history(values, column="validation_roc_auc"):
    table = pd.DataFrame({"epoch": range(1, len(values) + 1), "train_loss": 1.0})
    if values is not None:
        table[column] = values
    return table


@pytest.mark.parametrize("values, text, warns", [
    ([0.6, 0.8, 0.7], "highest validation roc auc", False),
    ([0.6, 0.8, 0.8], "tie: epochs 2 and 3 have the same validation roc auc (0.8); earliest kept", False),
    ([0.0, 0.0, 0.0], "tie: epochs 1-3 have the same validation roc auc (0); earliest kept", True),
    ([np.nan, np.nan], "last epoch: no validation split", True),
])
def test_kept_epoch_provenance(values, text, warns):
    why, warning = provenance.kept_epoch_choice(_history(values), "binary", "roc_auc")
    assert why == text and bool(warning) == warns
    if warns and "tie" in text:
        assert "every epoch (1-3)" in warning and "kept epoch (1) is a tie-break" in warning
    no_validation = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.9]})
    assert provenance.kept_epoch_choice(no_validation, "binary", "roc_auc")[0] == "last epoch: no validation split"


def test_fold_validation_parts_are_checked_like_a_split():
    def rows(labels, splits, groups=None):
        return pd.DataFrame({"label": labels, "split": splits, "group": groups or list(range(len(labels)))})

    assert provenance.fold_validation_warnings(1, rows(["a", "b", "a", "b"], [0, 0, 1, 1]), "binary") == []
    [empty] = provenance.fold_validation_warnings(2, rows(["a", "b"], [0, 0]), "binary")
    assert empty.startswith("fold 2: the validation part is empty") and "threshold is not tuned (0.5)" in empty
    [one] = provenance.fold_validation_warnings(1, rows(["a", "b", "a", "a"], [0, 0, 1, 1], [0, 1, 2, 2]), "binary")
    assert one.startswith("fold 1: the validation part holds one class ('a': 2 image(s) in 1 group(s))")
    [absent] = provenance.fold_validation_warnings(3, rows(list("abcab"), [0, 0, 0, 1, 1]), "multiclass")
    assert "class(es) 'c' have no rows in the validation part" in absent
    assert provenance.fold_validation_warnings(1, rows([1.0, 2.0, 3.0], [0, 1, 1], [0, 1, 1]), "regression")


def test_a_binary_split_without_validation_is_refused_before_training():
    with pytest.raises(InputError, match=r"has none \(--split-probabilities 0.8 0 0.2\): .*--threshold"):
        provenance.require_threshold_rows("binary", [0, 0, 2], None, (0.8, 0, 0.2), None)
    provenance.require_threshold_rows("binary", [0, 0, 2], 0.5, (0.8, 0, 0.2), None)  # fixed: nothing to tune
    provenance.require_threshold_rows("multiclass", [0, 0, 2], None, (0.8, 0, 0.2), None)
    provenance.require_threshold_rows("binary", [0, 1, 2], None, (0.8, 0, 0.2), "split")


# -------------------------------------------------------------------------------------------- real runs

def _run(out, csv, *extra):
    return image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--sample-id-column", "lesion_id", *extra])


def test_binary_without_validation_share_exits_2_naming_the_options(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, BINARY_CSV, "--split-probabilities", "0.8", "0", "0.2") == 2
    captured = capsys.readouterr()
    assert "--split-probabilities 0.8 0 0.2" in captured.err and "--threshold" in captured.err
    assert "training test_efficientnet" not in captured.out
    assert not out.exists() or not any(out.iterdir())


def _with_split_column(tmp_path, validation_of=None) -> str:
    """The binary demo with the split column of the multiclass demo (28 test rows: 2 'mel', 6 'nv');
    ``validation_of``: mark that class's first two train lesions as validation."""
    binary = pd.read_csv(BINARY_CSV)
    split = pd.read_csv(os.path.join(TEST_DATA, "ham10000_demo_split_column.csv"))[["image_path", "split"]]
    table = binary.merge(split, on="image_path")
    if validation_of:
        lesions = table.loc[(table["label"] == validation_of) & (table["split"] == "train"), "lesion_id"].unique()[:2]
        table.loc[table["lesion_id"].isin(lesions), "split"] = "validation"
    path = tmp_path / "binary_split.csv"
    table.to_csv(path, index=False)
    return str(path)


def test_single_split_threshold_is_choose_threshold_on_validation_rows_not_test(tmp_path):
    out = tmp_path / "run"
    assert _run(out, BINARY_CSV, "--positive-label", "mel", "--epochs", "2") == 0
    summary = json.loads((out / "run_summary.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")

    def chosen(split):
        rows = predictions[predictions["split"] == split]
        return metrics.choose_threshold(rows["true_label"] == "mel", rows["prob_mel"])

    assert summary["threshold"] == pytest.approx(chosen("validation"))
    assert chosen("test") != pytest.approx(chosen("validation"))  # the fixture can tell the two apart
    assert summary["threshold_policy"].startswith("tuned on the validation split (") and summary["threshold_tuned"]
    assert (predictions["predicted_label"] == np.where(predictions["prob_mel"] >= summary["threshold"], "mel",
                                                       "nv")).all()


def test_one_class_validation_says_not_tuned_and_warns(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, _with_split_column(tmp_path, validation_of="nv"), "--positive-label", "mel") == 0
    log = capsys.readouterr().out
    summary = json.loads((out / "run_summary.json").read_text())
    text = "not tuned: validation rows hold one class ('nv', 4 rows), 0.5"
    assert summary["threshold"] == 0.5 and summary["threshold_policy"] == text
    assert summary["threshold_tuned"] is False and "tuned on" not in summary["threshold_policy"]
    assert f"WARNING: decision threshold {text}" in log
    assert any(w.startswith(f"decision threshold {text}") for w in summary["warnings"])
    report = (out / "report.html").read_text()
    assert text.replace("'", "&#39;") in report


@pytest.fixture(scope="module")
def binary_cv_with_test_rows(tmp_path_factory):
    """Binary 2-fold CV on the 32 train rows of the split column, its 8 test rows held out, 2 epochs: issue 20's
    second reproduction (fold 2's validation part is one lesion of one class). Returns (output dir, log)."""
    tmp = tmp_path_factory.mktemp("binary_cv")
    out, log = tmp / "run", io.StringIO()
    with contextlib.redirect_stdout(log):
        code = _run(out, _with_split_column(tmp), "--positive-label", "mel", "--cross-validation", "2",
                    "--epochs", "2")
    assert code == 0
    return out, log.getvalue()


def test_binary_cv_threshold_is_choose_threshold_on_pooled_out_of_fold_rows(binary_cv_with_test_rows):
    out, _ = binary_cv_with_test_rows
    summary = json.loads((out / "run_summary.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")

    def chosen(split):
        rows = predictions[predictions["split"] == split]
        return metrics.choose_threshold(rows["true_label"] == "mel", rows["prob_mel"])

    assert summary["threshold"] == pytest.approx(chosen("cross_validation"))
    assert chosen("test") != pytest.approx(chosen("cross_validation"))  # the fixture can tell the two apart
    assert summary["threshold_policy"].startswith("tuned on the pooled out-of-fold predictions (32 rows: 18 'mel', ")
    assert summary["threshold_tuned"] is True


def test_binary_cv_held_out_test_rows_use_the_delivered_threshold(binary_cv_with_test_rows):
    out, _ = binary_cv_with_test_rows
    summary = json.loads((out / "run_summary.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    assert len(test) == 8 and test["fold"].isna().all()
    assert (test["predicted_label"] == np.where(test["prob_mel"] >= summary["threshold"], "mel", "nv")).all()
    metrics_json = json.loads((out / "metrics.json").read_text())
    assert metrics_json["test"]["n"] == 8 and metrics_json["cross_validation"]["pooled"]["n"] == 32


def test_binary_cv_checks_each_fold_validation_part_and_says_untuned_and_tied(binary_cv_with_test_rows):
    """Each fold's carved validation part, recomputed from split.csv, gets check_split's warnings (log, summary,
    report); a fold threshold on one class says "not tuned", a fold whose validation metric never moved says "tie"."""
    out, log = binary_cv_with_test_rows
    summary = json.loads((out / "run_summary.json").read_text())
    split = pd.read_csv(out / "split.csv", dtype={"label": str})
    table = split.assign(split=split["split"].map({"train": 0, "validation": 1, "test": 2}),
                         stratum=split["label"], fold=split["fold"].astype(int))
    report = (out / "report.html").read_text()
    expected = []
    for fold in (1, 2):
        rows = cross_validation.fold_rows(SimpleNamespace(table=table), fold, (0.7, 0.1, 0.2), 42)
        expected += provenance.fold_validation_warnings(fold, rows, "binary")
    assert any("fold 2: the validation part holds one class ('mel'" in w for w in expected)  # the case
    for warning in expected:
        assert warning in summary["warnings"] and f"WARNING: {warning}" in log
        assert warning.replace("'", "&#39;") in report
    folds = summary["cross_validation"]["fold_provenance"]
    assert folds[1]["threshold_policy"].startswith("not tuned: validation rows hold one class ('mel', ")
    assert summary["cross_validation"]["fold_thresholds"][1] == 0.5
    history = pd.read_csv(out / "training_history.csv")
    for entry in folds:
        values = history.loc[history["fold"].astype(str) == str(entry["fold"]), "validation_roc_auc"]
        assert entry["kept_epoch_chosen_by"].startswith("tie: ") == bool((values == values.max()).sum() > 1)


# ------------------------------------------------------------------- option errors before any unpacking

@pytest.mark.parametrize("csv, extra, message", [
    (DEMO_CSV, ["--threshold", "0.3"], "--threshold applies to binary tasks only; this is a multiclass task"),
    (AGE_CSV, ["--target-column", "age", "--class-weights", "balanced"], "--class-weights balanced is for"),
    (AGE_CSV, ["--target-column", "age", "--validation-metric", "roc_auc"], "does not apply to a regression task"),
    (BINARY_CSV, ["--validation-metric", "mae"], "does not apply to a binary task"),
])
def test_task_option_errors_come_before_any_image_is_unpacked(tmp_path, capsys, monkeypatch, csv, extra, message):
    def no_unpacking(*args, **kwargs):
        raise AssertionError("images unpacked before the task-dependent options were checked")

    monkeypatch.setattr(pipeline, "extract_images", no_unpacking)
    out = tmp_path / "run"
    assert image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "in the CSV" in captured.err
    assert "unpacking images" not in captured.out
    assert not out.exists() or not any(out.iterdir())


def test_the_early_task_check_stays_out_of_the_way_of_csv_errors(tmp_path):
    """A CSV the early check cannot read is left to dataset_prep, which names the problem in its place."""
    bad = tmp_path / "no_label.csv"
    bad.write_text("image_path,other\nimages/a.jpg,x\n")
    assert task_choice.task_from_csv(str(bad), "label", "auto") is None
    assert task_choice.task_from_csv(DEMO_CSV, "label", "auto")[0] == "multiclass"


# ----------------------------------------------------------------------------------- diverged training

def test_a_diverged_training_exits_2_with_one_line_naming_the_learning_rate(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, BINARY_CSV, "--learning-rate", "1e30") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("image-learner: error:")]
    assert lines == ["image-learner: error: training diverged: the model's weights became NaN or infinite before "
                     "any epoch could be kept (--learning-rate 1e+30); lower --learning-rate (e.g. 1e-4)"]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
