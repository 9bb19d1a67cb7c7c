"""--ensemble folds / folds+refit: the pure core (which members, the manifest's record and its checks, the
averaging), then one tiny real run (test_efficientnet, 32 px, 1 epoch, 2 folds, the demo split column's 28
test rows held out) whose model ZIP holds the fold models, whose predict reproduces the training's ensemble,
and whose tampered copies are refused with exit 2 and one line naming the file."""

import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_ZIP, TEST_DATA, make_zip
from image_learner.errors import InputError
from image_learner.evaluation import bootstrap
from image_learner.model import fold_ensemble

SPLIT_CSV = os.path.join(TEST_DATA, "ham10000_demo_split_column.csv")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1", "--no-audit"]
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MANIFEST = "model/image_learner.json"


def _manifest(task="multiclass"):
    return {"task": task, "classes": [] if task == "regression" else CLASSES,
            "label_vocabulary": list(reversed(CLASSES)) if task == "multiclass" else None}


def _record(task="multiclass", k=2, mode="folds"):
    fold = {"label_vocabulary": CLASSES if task == "multiclass" else None,
            "target_scaling": {"mean": 50.0, "std": 10.0} if task == "regression" else None}
    return fold_ensemble.make_record(mode, [dict(fold) for _ in range(k)])


# --- the pure core -----------------------------------------------------------------------------------------

def test_mode_needs_cross_validation_and_no_tabular_columns():
    fold_ensemble.check_mode("refit", 0, False)
    fold_ensemble.check_mode("folds", 5, False)
    for mode, k, tabular, message in (("folds", 0, False, "--ensemble folds needs --cross-validation"),
                                      ("folds+refit", fold_ensemble.MAX_FOLDS + 1, False, "at most 20 fold models"),
                                      ("folds", 3, True, "--tabular-columns"), ("bagging", 3, False, "--ensemble")):
        with pytest.raises(InputError, match=message.replace("+", r"\+")):
            fold_ensemble.check_mode(mode, k, tabular)


def test_members_are_named_by_the_record_and_nothing_else_is_one():
    assert fold_ensemble.members(_record(k=3)) == [f"fold_{k}_weights.safetensors" for k in (1, 2, 3)]
    assert fold_ensemble.members(None) == []
    assert fold_ensemble.is_member("fold_20_weights.safetensors")
    for name in ("fold_0_weights.safetensors", "fold_21_weights.safetensors", "fold_01_weights.safetensors",
                 "fold_1_weights.safetensors.bak", "../fold_1_weights.safetensors", "fold_x_weights.safetensors"):
        assert not fold_ensemble.is_member(name), name


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_a_genuine_record_passes(task):
    fold_ensemble.check_record(_record(task), _manifest(task), "image_learner.json")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(k=3), "ensemble.folds is"),  # the count tampered: 3 claimed, 2 folds described
    (lambda r: r.update(k=1, folds=r["folds"][:1]), "ensemble.k is 1, expected an integer from 2 to 20"),
    (lambda r: r.update(k=True), "ensemble.k is True"),
    (lambda r: r.update(mode="refit"), "ensemble.mode is 'refit'"),
    (lambda r: r.update(calibrated_on="the test rows"), "ensemble.calibrated_on is 'the test rows'"),
    (lambda r: r.update(extra=1), "ensemble is"),
    (lambda r: r["folds"][1].update(label_vocabulary=CLASSES[:-1]), "ensemble.folds[1].label_vocabulary"),
    (lambda r: r["folds"][0].update(label_vocabulary=CLASSES[:-1] + ["akiec"]), "ensemble.folds[0].label_vocabulary"),
    (lambda r: r["folds"][0].update(label_vocabulary=CLASSES[:-1] + ["cat"]), "ensemble.folds[0].label_vocabulary"),
    (lambda r: r["folds"][0].update(target_scaling={"mean": 0.0, "std": 1.0}), "ensemble.folds[0].target_scaling"),
])
def test_a_tampered_record_is_refused_naming_the_field(edit, message):
    record = _record()
    edit(record)
    with pytest.raises(InputError, match="^image_learner.json: " + message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        fold_ensemble.check_record(record, _manifest(), "image_learner.json")


def test_a_regression_fold_needs_its_own_target_scaling():
    record = _record("regression")
    record["folds"][1]["target_scaling"] = {"mean": 1.0, "std": 0.0}
    with pytest.raises(InputError, match=r"ensemble.folds\[1\].target_scaling"):
        fold_ensemble.check_record(record, _manifest("regression"), "image_learner.json")


def test_the_members_must_be_exactly_the_ones_the_record_names():
    record = _record(k=3)
    fold_ensemble.check_members({"model_weights.safetensors", *fold_ensemble.members(record)}, record, "m.json")
    for names, message in ((fold_ensemble.members(record)[:2], "missing fold_3_weights.safetensors"),
                           ([*fold_ensemble.members(record), "fold_4_weights.safetensors"],
                            "fold_4_weights.safetensors is not one it names")):
        with pytest.raises(InputError, match=f"^m.json: ensemble.k is 3 but the ZIP holds {len(names)} .*{message}"):
            fold_ensemble.check_members(set(names), record, "m.json")
    with pytest.raises(InputError, match="ensemble.k is 0 but the ZIP holds 1"):  # no record: no fold files
        fold_ensemble.check_members({"fold_1_weights.safetensors"}, None, "m.json")


def test_averaging_weighs_each_member_the_same_and_refuses_mismatched_members():
    a, b, c = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]]), np.array([[1.0, 0.0]])
    assert fold_ensemble.averaged([a, b, c]) == pytest.approx(np.array([[0.6, 0.4]]))
    assert fold_ensemble.averaged([np.array([1.0, 3.0]), np.array([2.0, 5.0])]) == pytest.approx([1.5, 4.0])
    with pytest.raises(ValueError, match="shape"):
        fold_ensemble.averaged([a, np.array([0.5])])


def test_the_paired_difference_is_the_difference_of_the_metrics_on_the_same_resamples():
    truth = np.array(["a", "a", "a", "b", "b", "c"])
    ensemble = np.array(["a", "a", "b", "b", "b", "c"])  # recalls 2/3, 1, 1
    refit = np.array(["a", "b", "b", "b", "a", "a"])  # recalls 1/3, 1/2, 0
    groups = np.arange(6)
    paired = fold_ensemble.paired_difference(truth, ensemble, refit, groups, "multiclass", n_resamples=200)
    assert paired["ensemble_minus_refit"] == pytest.approx((2 / 3 + 1 + 1) / 3 - (1 / 3 + 1 / 2 + 0) / 3)
    assert paired["ci95"][0] <= paired["ensemble_minus_refit"] <= paired["ci95"][1] and paired["groups"] == 6
    assert paired["accuracy"]["ensemble_minus_refit"] == pytest.approx(5 / 6 - 2 / 6)  # 5 hits against 2
    assert paired["accuracy"]["ci95"][0] <= 0.5 <= paired["accuracy"]["ci95"][1]
    by_hand = []  # the accuracy difference on each of the same resamples, computed one at a time
    for weights in bootstrap.resample_weights(6, groups, 200, 42):
        for column in weights.T:
            by_hand.append(((ensemble == truth) * column).sum() / column.sum() - ((refit == truth) * column).sum()
                           / column.sum())
    assert paired["accuracy"]["ci95"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])))
    same = fold_ensemble.paired_difference(truth, ensemble, ensemble, groups, "multiclass", n_resamples=200)
    assert same["ensemble_minus_refit"] == 0 and same["ci95"] == [0.0, 0.0]  # paired: no spread of its own
    values = fold_ensemble.paired_difference(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 3.0]),
                                             np.array([2.0, 2.0, 1.0]), np.array([0, 0, 1]), "regression")
    assert values["metric"] == "mae" and values["ensemble_minus_refit"] == pytest.approx(0.5 / 3 - 3 / 3)
    assert values["groups"] == 2


def test_the_fold_manifest_takes_the_folds_class_order_and_scaling():
    manifest = {**_manifest("regression"), "ensemble": _record("regression"), "target_scaling": {"mean": 0, "std": 1}}
    assert fold_ensemble.fold_manifest(manifest, 2)["target_scaling"] == {"mean": 50.0, "std": 10.0}
    assert fold_ensemble.uses_refit(manifest) is False and fold_ensemble.uses_refit({}) is True
    assert fold_ensemble.uses_refit({"ensemble": _record(mode="folds+refit")}) is True


# --- one tiny real run -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    # 2 epochs: a fold may keep epoch 1 or 2; its file must be the weights that predicted in training
    assert image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--epochs", "2", "--sample-id-column", "lesion_id", "--cross-validation", "2",
                                   "--ensemble", "folds+refit", "--class-decision", "balanced"]) == 0
    return out


def _members(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}


def test_the_model_zip_holds_the_fold_models_and_the_manifest_counts_them(ensemble_run):
    members = _members(ensemble_run / "trained_model.zip")
    assert {"model/fold_1_weights.safetensors", "model/fold_2_weights.safetensors"} <= set(members)
    assert "model/fold_3_weights.safetensors" not in members
    # each fold's own weights: not copies of the refit's, nor of each other
    weights = [members[f"model/{n}"] for n in ("model_weights.safetensors", "fold_1_weights.safetensors",
                                               "fold_2_weights.safetensors")]
    assert len(set(weights)) == 3
    record = json.loads(members[MANIFEST])["ensemble"]
    assert record["mode"] == "folds+refit" and record["k"] == 2 and len(record["folds"]) == 2
    assert all(sorted(f["label_vocabulary"]) == CLASSES for f in record["folds"])
    assert "an ensemble of 3 models" in members["model/MODEL_CARD.md"].decode()
    kept = json.loads((ensemble_run / "run_summary.json").read_text())["cross_validation"]["kept_epochs"]
    assert len(kept) == 2 and set(kept) <= {1, 2}


def test_the_metrics_compare_the_ensemble_with_the_refit_on_the_test_rows_only(ensemble_run):
    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    comparison = metrics["ensemble"]
    assert comparison["members"] == 3 and comparison["test_rows"] == 28
    assert comparison["ensemble_test"]["n"] == comparison["refit_test"]["n"] == 28
    # the delivered test metrics are the ensemble's (decided with the same balanced offsets)
    assert comparison["ensemble_test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert comparison["ensemble_test"]["balanced_accuracy"] == pytest.approx(metrics["test"]["balanced_accuracy"])
    predictions = pd.read_csv(ensemble_run / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    assert len(test) == 28
    accuracy = (test["predicted_label"] == test["true_label"]).mean()
    assert comparison["ensemble_test"]["accuracy"] == pytest.approx(accuracy)
    # the paired difference's point is the two balanced accuracies' difference; its interval holds it
    paired = comparison["paired_difference"]
    assert paired["metric"] == "balanced_accuracy" and paired["resamples"] == 1000
    assert paired["ensemble_minus_refit"] == pytest.approx(comparison["ensemble_test"]["balanced_accuracy"]
                                                           - comparison["refit_test"]["balanced_accuracy"])
    assert paired["ci95"][0] <= paired["ensemble_minus_refit"] <= paired["ci95"][1]
    assert paired["groups"] == test["sample_id"].nunique() < 28  # lesions drawn whole
    # accuracy's paired difference too (the two can move apart)
    assert paired["accuracy"]["ensemble_minus_refit"] == pytest.approx(comparison["ensemble_test"]["accuracy"]
                                                                       - comparison["refit_test"]["accuracy"])
    assert paired["accuracy"]["ci95"][0] <= paired["accuracy"]["ensemble_minus_refit"] <= paired["accuracy"]["ci95"][1]
    report = (ensemble_run / "report.html").read_text()
    assert "fold ensemble" in report and "refit" in report and "paired 95% interval" in report
    assert "<b>accuracy: " in report


def test_predict_averages_the_fold_models_as_training_did(ensemble_run, tmp_path):
    """predict's probabilities on the 28 test images equal the training's ensemble ones (the fold models'
    kept-epoch weights, each with its own class order, and the refit, averaged, then the one temperature)."""
    csv = tmp_path / "test.csv"
    table = pd.read_csv(SPLIT_CSV)
    table[table["split"] == "test"].to_csv(csv, index=False)
    assert image_learner_cli.main(["predict", "--model", str(ensemble_run / "trained_model.zip"), "--image-zip",
                                   DEMO_ZIP, "--csv-file", str(csv), "--output-dir", str(tmp_path / "p")]) == 0
    trained = pd.read_csv(ensemble_run / "predictions.csv").query("split == 'test'").set_index("image").sort_index()
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image").loc[trained.index]
    columns = [f"prob_{c}" for c in CLASSES]
    assert np.abs(trained[columns].to_numpy() - predicted[columns].to_numpy()).max() < 1e-5
    assert predicted["predicted_label"].tolist() == trained["predicted_label"].tolist()  # the same class offsets
    assert (trained["predicted_label"] == predicted["predicted_label"]).all()


def _refused(tmp_path, capsys, members, message):
    tmp_path.mkdir()
    model = make_zip(tmp_path / "model.zip", members)
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if "model.zip" in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err[-2000:]


DECODER = "output_features.module_dict.label__ludwig.decoder_obj.dense.dense."


def _as_float64(weights: bytes, name: str) -> bytes:
    from safetensors.numpy import load, save

    tensors = load(weights)
    tensors[name] = tensors[name].astype(np.float64)
    return save(tensors)


def _edited(members, edit):
    document = json.loads(members[MANIFEST])
    edit(document["ensemble"])
    return {**members, MANIFEST: json.dumps(document).encode()}


def test_a_tampered_ensemble_is_refused_naming_the_file(ensemble_run, tmp_path, capsys):
    members = _members(ensemble_run / "trained_model.zip")
    third = {**members, "model/fold_3_weights.safetensors": members["model/fold_2_weights.safetensors"]}
    for case, tampered, message in (
            ("count", _edited(third, lambda r: r.update(k=3)), "image_learner.json: ensemble.folds is"),
            ("missing", {k: v for k, v in members.items() if k != "model/fold_2_weights.safetensors"},
             "image_learner.json: ensemble.k is 2 but the ZIP holds 1 fold weight file(s) (missing "
             "fold_2_weights.safetensors)"),
            ("extra", third, "ensemble.k is 2 but the ZIP holds 3 fold weight file(s) (fold_3_weights.safetensors"),
            ("no record", _edited(members, lambda r: r.clear()), "image_learner.json: ensemble is"),
            ("weights", {**members, "model/fold_2_weights.safetensors": members[MANIFEST]},
             "fold_2_weights.safetensors is not a valid safetensors file"),
            ("dtype", {**members, "model/fold_2_weights.safetensors": _as_float64(
                members["model/fold_2_weights.safetensors"], DECODER + "bias")},
             f"fold_2_weights.safetensors does not fit the model its config describes: {DECODER}bias has dtype F64")):
        _refused(tmp_path / case, capsys, tampered, message)


def test_a_regression_fold_ensemble_predicts_the_mean_of_its_folds_values(tmp_path):
    """--ensemble folds (no refit) on age with the split column's test rows: each fold model has its own target
    scaling (its training rows'), and predict's values on the test images equal training's ensemble values;
    the refit's differ (it is not a member)."""
    table = pd.read_csv(os.path.join(TEST_DATA, "ham10000_demo_age.csv")).merge(
        pd.read_csv(SPLIT_CSV)[["image_path", "split"]], on="image_path")
    csv = tmp_path / "age.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "run"
    assert image_learner_cli.main(["--csv-file", str(csv), "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--target-column", "age", "--sample-id-column", "lesion_id",
                                   "--cross-validation", "2", "--ensemble", "folds"]) == 0
    manifest = json.loads(_members(out / "trained_model.zip")[MANIFEST])
    scalings = [f["target_scaling"] for f in manifest["ensemble"]["folds"]]
    assert manifest["ensemble"]["mode"] == "folds" and len(scalings) == 2
    assert scalings[0] != scalings[1] != manifest["target_scaling"]  # each from its own training rows
    comparison = json.loads((out / "metrics.json").read_text())["ensemble"]
    assert comparison["members"] == 2 and comparison["ensemble_test"]["n"] == comparison["refit_test"]["n"] == 28
    assert comparison["ensemble_test"]["mae"] != pytest.approx(comparison["refit_test"]["mae"])
    assert comparison["paired_difference"]["ensemble_minus_refit"] == pytest.approx(
        comparison["ensemble_test"]["mae"] - comparison["refit_test"]["mae"])
    test_csv = tmp_path / "test.csv"
    table[table["split"] == "test"].to_csv(test_csv, index=False)
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", str(test_csv), "--output-dir", str(tmp_path / "p")]) == 0
    trained = pd.read_csv(out / "predictions.csv").query("split == 'test'").set_index("image").sort_index()
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image").loc[trained.index]
    assert np.abs(trained["predicted_value"] - predicted["predicted_value"]).max() < 1e-3


@pytest.mark.parametrize("extra, message", [
    ([], "--ensemble folds needs --cross-validation K"),
    (["--cross-validation", "2", "--tabular-columns", "age"], "--ensemble folds does not yet combine with "
                                                              "--tabular-columns"),
])
def test_an_ensemble_the_run_cannot_make_is_refused_before_training(tmp_path, capsys, extra, message):
    code = image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "run"), *TINY, "--ensemble", "folds", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
