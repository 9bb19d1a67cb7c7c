"""Real training runs (timm's tiny test_efficientnet, random init, 32 px, 2 epochs) on the bundled
HAM10000 demo set: every output present, row counts consistent, numbers recomputable, reproducible."""

import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, ROOT, TEST_DATA

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "2",
        "--batch-size", "16", "--preprocessing-workers", "1"]
OUTPUTS = ["predictions.csv", "training_history.csv", "metrics.json", "config.yaml", "split.csv",
           "run_summary.json", "trained_model.zip", "report.html", "training_log.txt", "data_health.csv", "model",
           "label_issues.csv", "embeddings.csv"]


def _train(out, *extra, csv=DEMO_CSV):
    code = image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """A scratch working directory, HOME and temp dir, to prove nothing is written outside the output
    directory."""
    base = tmp_path_factory.mktemp("isolated")
    for name in ("home", "cwd", "tmp"):
        (base / name).mkdir()
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(base / "home"))
    patch.setattr(tempfile, "tempdir", str(base / "tmp"))
    patch.chdir(base / "cwd")
    yield base
    patch.undo()


@pytest.fixture(scope="module")
def run_dir(isolated):
    return _train(isolated / "run", "--sample-id-column", "lesion_id")


def test_every_output_is_written_and_nothing_else(run_dir, isolated):
    assert sorted(os.listdir(run_dir)) == sorted(OUTPUTS)
    with zipfile.ZipFile(run_dir / "trained_model.zip") as archive:
        members = set(archive.namelist())
    assert {"model/model_hyperparameters.json", "model/model_weights.safetensors",
            "model/training_set_metadata.json"} <= members
    assert not any("checkpoint" in m for m in members)
    for scratch in ("cwd", "home", "tmp"):
        assert os.listdir(isolated / scratch) == [], scratch


def test_row_counts_agree_across_outputs(run_dir):
    summary = json.loads((run_dir / "run_summary.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions.csv")
    split = pd.read_csv(run_dir / "split.csv")
    history = pd.read_csv(run_dir / "training_history.csv")
    assert len(predictions) == len(split) == summary["dataset"]["matched_rows"] == 140
    assert predictions["image"].tolist() == split["image"].tolist()
    for name, counts in summary["dataset"]["class_counts"].items():
        assert (predictions["split"] == name).sum() == sum(counts.values())
    assert len(history) == summary["training"]["epochs_run"] <= 2
    assert {"train_loss", "validation_loss", "train_accuracy", "validation_accuracy"} <= set(history.columns)
    assert split.groupby("sample_id")["split"].nunique().max() == 1  # lesions never straddle


def test_device_and_precision_that_ran_are_recorded(run_dir):
    import torch

    summary = json.loads((run_dir / "run_summary.json").read_text())
    gpu = torch.cuda.is_available()  # --device auto, --mixed-precision auto
    assert summary["training"]["device"] == ("cuda" if gpu else "cpu")
    assert summary["training"]["mixed_precision"] == ("on" if gpu else "off")
    assert summary["device"].endswith("mixed precision" if gpu else "float32")
    report = (run_dir / "report.html").read_text()
    assert "<th>mixed precision</th><td>" + summary["training"]["mixed_precision"] in report
    assert summary["device"] in report


def test_predictions_are_probabilities_and_metrics_recompute(run_dir):
    predictions = pd.read_csv(run_dir / "predictions.csv")
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    proba = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (np.asarray(classes)[proba.argmax(axis=1)] == predictions["predicted_label"]).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = predictions[predictions["split"] == "test"]
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy_score(test["true_label"], test["predicted_label"]))
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(test["true_label"], test["predicted_label"]))


def test_the_kept_epoch_has_the_best_validation_balanced_accuracy_and_made_the_predictions(run_dir):
    history = pd.read_csv(run_dir / "training_history.csv").set_index("epoch")
    best = json.loads((run_dir / "run_summary.json").read_text())["training"]["best_epoch"]
    assert history.loc[best, "validation_balanced_accuracy"] == history["validation_balanced_accuracy"].max()
    assert best == history["validation_balanced_accuracy"].idxmax()  # the first of equal epochs
    predictions = pd.read_csv(run_dir / "predictions.csv")
    for part in ("validation", "test"):
        rows = predictions[predictions["split"] == part]
        assert history.loc[best, f"{part}_accuracy"] == pytest.approx(
            accuracy_score(rows["true_label"], rows["predicted_label"]), abs=1e-6)


def test_same_seed_same_split_and_numbers(run_dir, isolated):
    again = _train(isolated / "again", "--sample-id-column", "lesion_id")
    assert pd.read_csv(run_dir / "split.csv").equals(pd.read_csv(again / "split.csv"))
    first = pd.read_csv(run_dir / "predictions.csv").filter(like="prob_").to_numpy()
    second = pd.read_csv(again / "predictions.csv").filter(like="prob_").to_numpy()
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_the_host_allocator_settings_change_no_number(run_dir, isolated):
    # run_dir trained in this process, whose allocator the command line tuned (host_allocator); this run
    # keeps glibc's behaviour (a user's MALLOC_ variable, glibc's default top pad, stops the tuning).
    env = dict(os.environ, MALLOC_TOP_PAD_="131072", HOME=str(isolated / "home"), TMPDIR=str(isolated / "tmp"))
    out = isolated / "glibc_defaults"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", DEMO_CSV,
                           "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY, "--sample-id-column",
                           "lesion_id"], cwd=isolated / "cwd", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("predictions.csv", "training_history.csv"):
        ours, theirs = pd.read_csv(run_dir / name), pd.read_csv(out / name)
        assert list(ours.columns) == list(theirs.columns)
        numbers = ours.select_dtypes("number").columns
        np.testing.assert_allclose(ours[numbers].to_numpy(), theirs[numbers].to_numpy(), atol=1e-6)
        assert ours.drop(columns=numbers).equals(theirs.drop(columns=numbers))


def test_binary_task_uses_the_validation_threshold(isolated):
    out = _train(isolated / "binary", "--positive-label", "mel",
                 csv=os.path.join(TEST_DATA, "ham10000_demo_binary.csv"))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["task"] == "binary" and summary["positive_label"] == "mel"
    history = pd.read_csv(out / "training_history.csv").set_index("epoch")
    assert summary["training"]["best_epoch"] == history["validation_roc_auc"].idxmax()
    predictions = pd.read_csv(out / "predictions.csv")
    assert [c for c in predictions.columns if c.startswith("prob_")] == ["prob_nv", "prob_mel"]
    expected = np.where(predictions["prob_mel"] >= summary["threshold"], "mel", "nv")
    assert (predictions["predicted_label"] == expected).all()
    assert summary["dataset"]["unused_images"] == 140 - len(predictions)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_missing_label_column_fails_cleanly(tmp_path):
    pd.read_csv(DEMO_CSV).drop(columns=["label"]).to_csv(tmp_path / "meta.csv", index=False)
    result = _cli("--csv-file", "meta.csv", "--image-zip", DEMO_ZIP, "--output-dir", "out", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert "label column 'label' (--target-column) is not in the CSV; its columns are: 'image_path'" in result.stderr
    assert os.listdir(tmp_path / "out") == []  # no stub outputs
    assert sorted(os.listdir(tmp_path)) == ["meta.csv", "out"]


def test_a_split_column_that_is_not_in_the_csv_fails_cleanly(tmp_path, capsys):
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "out"), *TINY, "--split-column", "fold"])
    assert code == 2
    assert ("split column 'fold' (--split-column) is not in the CSV; its columns are: 'image_path', 'label', "
            "'lesion_id', 'image_id'") in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


def test_zip_that_matches_no_row_fails_cleanly(tmp_path):
    table = pd.read_csv(DEMO_CSV)
    table["image_path"] = "other/" + table["image_path"].str.replace("images/", "x_")
    table.to_csv(tmp_path / "meta.csv", index=False)
    result = _cli("--csv-file", "meta.csv", "--image-zip", DEMO_ZIP, "--output-dir", "out", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert "no CSV row matched an image in the ZIP" in result.stderr
    assert os.listdir(tmp_path / "out") == []


def test_a_crash_during_training_leaves_no_outputs(tmp_path, monkeypatch, capsys):
    from image_learner.training import ludwig_trainer

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ludwig_trainer, "train", out_of_memory)
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "out"), *TINY])
    assert code == 137
    assert "out of memory" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


def test_a_previous_run_is_replaced_only_when_asked(run_dir, tmp_path, capsys):
    import shutil

    previous = tmp_path / "previous"
    shutil.copytree(run_dir, previous)
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(previous),
                                   *TINY])
    assert code == 2 and "holds a previous run: pass --overwrite" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not ours")
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "mine"), "--overwrite", *TINY])
    assert code == 2 and "refusing to delete files there" in capsys.readouterr().err
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_missing_pretrained_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_cache"))
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "out"), "--model-name", "resnet18", "--image-size", "32",
                                   "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 3
    assert "could not load pretrained weights for 'resnet18'" in err
    assert "HF_HUB_OFFLINE=1" in err and "--pretrained-weights FILE" in err
    assert os.listdir(tmp_path / "out") == []


def test_labels_spelled_like_missing_values_train_and_stay_text(tmp_path, capsys):
    """'N/A' and 'null' are classes: training finishes and every output holds the label text (pandas
    used to re-read them as NaN from predictions.csv, killing the run after training)."""
    table = pd.read_csv(DEMO_CSV)
    table["label"] = table["label"].replace({"akiec": "N/A", "bcc": "null"})
    table.to_csv(tmp_path / "meta.csv", index=False)
    out = tmp_path / "out"
    assert image_learner_cli.main(["--csv-file", str(tmp_path / "meta.csv"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(out), *TINY, "--epochs", "1"]) == 0
    assert "class 'N/A' (20 images) is spelled like a missing-value marker" in capsys.readouterr().out
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert predictions["true_label"].value_counts()[["N/A", "null"]].tolist() == [20, 20]
    assert {"prob_N/A", "prob_null"} <= set(predictions.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"N/A", "null"} <= {row["class"] for row in metrics["test"]["per_class"]}
    report = (out / "report.html").read_text()
    assert "<td>N/A</td>" in report and "<td>null</td>" in report
    assert "class &#39;null&#39; (20 images) is spelled like a missing-value marker" in report


def test_the_kept_epoch_is_the_best_by_the_chosen_validation_metric(isolated):
    out = _train(isolated / "by_loss", "--validation-metric", "loss", "--epochs", "3")
    summary = json.loads((out / "run_summary.json").read_text())
    history = pd.read_csv(out / "training_history.csv").set_index("epoch")
    best = summary["training"]["best_epoch"]
    assert summary["training"]["best_epoch_chosen_by"] == "lowest validation loss"
    assert len(history) == 3 and best == history["validation_loss"].idxmin()  # lowest, first of equal epochs
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["validation_metric"] == "loss"
    predictions = pd.read_csv(out / "predictions.csv")
    rows = predictions[predictions["split"] == "validation"]  # Ludwig kept that epoch's weights
    assert history.loc[best, "validation_accuracy"] == pytest.approx(
        accuracy_score(rows["true_label"], rows["predicted_label"]), abs=1e-6)
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        manifest = json.loads(archive.read("model/image_learner.json"))
    assert manifest["training"]["options"]["validation_metric"] == "loss"


def test_binary_fixed_threshold_and_macro_f1_selection(isolated):
    out = _train(isolated / "fixed", "--positive-label", "mel", "--threshold", "0.3", "--validation-metric", "macro_f1",
                 csv=os.path.join(TEST_DATA, "ham10000_demo_binary.csv"))
    summary = json.loads((out / "run_summary.json").read_text())
    assert (summary["threshold"], summary["threshold_policy"]) == (0.3, "fixed by --threshold")
    history = pd.read_csv(out / "training_history.csv").set_index("epoch")
    best = summary["training"]["best_epoch"]
    assert best == history["validation_macro_f1"].idxmax()
    predictions = pd.read_csv(out / "predictions.csv")
    assert (predictions["predicted_label"] == np.where(predictions["prob_mel"] >= 0.3, "mel", "nv")).all()
    # the metrics we registered with Ludwig: computed at P >= 0.5, as scikit-learn does on our predictions
    rows = predictions[predictions["split"] == "validation"]
    at_half = np.where(rows["prob_mel"] >= 0.5, "mel", "nv")
    assert history.loc[best, "validation_macro_f1"] == pytest.approx(
        f1_score(rows["true_label"], at_half, average="macro"), abs=1e-6)
    assert history.loc[best, "validation_balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(rows["true_label"], at_half), abs=1e-6)
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        manifest = json.loads(archive.read("model/image_learner.json"))
    assert manifest["threshold"] == manifest["training"]["options"]["threshold"] == 0.3


def test_a_fixed_threshold_on_a_multiclass_task_is_exit_2_naming_the_option(isolated, capsys):
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(isolated / "multi_threshold"), *TINY, "--threshold", "0.3"])
    assert code == 2
    assert "--threshold applies to binary tasks only; this is a multiclass task" in capsys.readouterr().err
    assert os.listdir(isolated / "multi_threshold") == []  # nothing left behind
