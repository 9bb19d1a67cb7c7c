"""Every training option that reaches the saved model gives a model its own predict accepts, and predict
reproduces the training run's predictions of the same images (issue 20, finding 0: every model trained with
--class-weights balanced was refused). Options are combined so that six trainings (1 epoch, timm's tiny
test_efficientnet at 32 px) cover class weights, test-time augmentation (flips, dihedral), the binary positive weight, each task, the cosine schedule,
every augmentation, mixed precision off and auto, fixed threshold, frozen backbone, and cross-validation's
final model. DDP: tests/test_data_parallel.py predicts with a model trained under --distributed ddp.
Also: a model that passes our checks but that Ludwig cannot load is exit 2 with one line naming the model
file, and bitsandbytes' import-time warning about its missing "kernels" package never reaches the user."""

import json
import logging
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import CLI, DEMO_CSV, DEMO_ZIP, TEST_DATA, make_zip

BINARY_CSV = os.path.join(TEST_DATA, "ham10000_demo_binary.csv")
SPLIT_CSV = os.path.join(TEST_DATA, "ham10000_demo_split_column.csv")
AGE_CSV = os.path.join(TEST_DATA, "ham10000_demo_age.csv")
TINY_MODEL = os.path.join(TEST_DATA, "tiny_model.zip")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1", "--no-report"]
ALL_AUGMENTATIONS = ("random_horizontal_flip,random_vertical_flip,random_rotate,random_blur,random_brightness,"
                     "random_contrast,dihedral,resized_crop,color_jitter")
# Lesions kept per class (2 images each): unequal counts give unequal balanced weights, and Ludwig's
# vocabulary (by decreasing count) then differs from the sorted class order.
UNEQUAL = {"akiec": 4, "bcc": 5, "bkl": 6, "df": 7, "mel": 8, "nv": 10, "vasc": 9}


def _unequal(source: str, path, lesions: dict) -> str:
    """``source``'s rows of the first ``lesions[label]`` lesions of each label (test rows of a split column
    all kept), written to ``path``."""
    table = pd.read_csv(source)
    held_out = table["split"].eq("test") if "split" in table else pd.Series(False, index=table.index)
    kept = [lesion for label, n in lesions.items()
            for lesion in table.loc[~held_out & table["label"].eq(label), "lesion_id"].drop_duplicates()[:n]]
    table[held_out | table["lesion_id"].isin(kept)].to_csv(path, index=False)
    return str(path)


def _binary_with_split(path) -> str:
    """The binary demo rows with the split column's train/test assignment (by image)."""
    split = pd.read_csv(SPLIT_CSV).set_index("image_path")["split"]
    table = pd.read_csv(BINARY_CSV)
    table.assign(split=split.loc[table["image_path"]].to_numpy()).to_csv(path, index=False)
    return str(path)


MULTICLASS = "multiclass balanced, cosine, every augmentation, balanced decision, mixed precision off"
# name -> (CSV builder (tmp folder -> path), training options, predict options)
CASES = {
    MULTICLASS: (
        lambda d: _unequal(DEMO_CSV, d / "meta.csv", UNEQUAL),
        ["--class-weights", "balanced", "--lr-schedule", "cosine", "--augmentation", ALL_AUGMENTATIONS,
         "--mixed-precision", "off", "--validation-metric", "macro_f1", "--sample-id-column", "lesion_id",
         "--class-decision", "balanced"], []),
    "multiclass balanced, balanced decision, cross-validation's final model": (
        lambda d: _unequal(SPLIT_CSV, d / "meta.csv", {"akiec": 4, "bcc": 5, "bkl": 6, "df": 7, "mel": 8, "nv": 7,
                                                       "vasc": 6}),
        ["--class-weights", "balanced", "--cross-validation", "2", "--sample-id-column", "lesion_id", "--tta",
         "dihedral", "--class-decision", "balanced"], []),
    "binary balanced (positive weight), cosine, f1 threshold": (
        lambda d: _unequal(BINARY_CSV, d / "meta.csv", {"mel": 6, "nv": 10}),
        ["--class-weights", "balanced", "--lr-schedule", "cosine", "--threshold-metric", "f1"], []),
    "binary fixed threshold, frozen backbone, mixed precision auto": (
        lambda d: BINARY_CSV,
        ["--threshold", "0.3", "--no-fine-tune", "--augmentation", "random_rotate,random_blur",
         "--mixed-precision", "auto", "--validation-metric", "loss", "--tta", "flips"], []),
    "binary balanced, cross-validation's final model": (
        lambda d: _binary_with_split(d / "meta.csv"), ["--class-weights", "balanced", "--cross-validation", "2",
                             "--sample-id-column", "lesion_id"], []),
    "regression, cosine, augmentations": (
        lambda d: AGE_CSV,
        ["--target-column", "age", "--sample-id-column", "lesion_id", "--lr-schedule", "cosine",
         "--augmentation", "random_horizontal_flip,random_brightness,random_contrast", "--validation-metric", "rmse",
         "--tta", "flips"],
        ["--target-column", "age"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained once per case, on first use: {name: (csv, output folder)}."""
    done = {}

    def trained(name):
        if name not in done:
            folder = tmp_path_factory.mktemp("round_trip")
            build, options, _ = CASES[name]
            csv = build(folder)
            out = folder / "train"
            assert image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                           *TINY, *options]) == 0
            done[name] = (csv, out)
        return done[name]

    return trained


def _model_file(out, name: str):
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        return json.loads(archive.read(f"model/{name}"))


@pytest.mark.parametrize("case", CASES)
def test_predict_accepts_the_model_and_reproduces_the_training_predictions(runs, tmp_path, case):
    csv, out = runs(case)
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", csv, "--output-dir", str(tmp_path / "p"), *CASES[case][2]]) == 0
    before = pd.read_csv(out / "predictions.csv")
    if "fold" in before:  # cross-validation: fold rows come from the fold models, test rows from the final one
        before = before[before["split"] == "test"]
    assert len(before) >= 8
    after = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image").loc[before["image"]]
    if "predicted_value" in before:
        np.testing.assert_allclose(after["predicted_value"], before["predicted_value"], rtol=1e-5, atol=1e-3)
        return
    probs = [c for c in before if c.startswith("prob_")]
    assert probs and [c for c in after if c.startswith("prob_")] == probs
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)
    assert after["predicted_label"].tolist() == before["predicted_label"].tolist()
    assert (tmp_path / "p" / "metrics.json").exists()


@pytest.mark.parametrize("case", [c for c in CASES if "balanced" in c])
def test_balanced_weights_are_saved_as_ludwig_orders_them(runs, case):
    """What the check compares with: Ludwig saves the class weights as a list in its vocabulary order (or
    the binary positive weight as a number), equal value by value to the weights the manifest records."""
    _, out = runs(case)
    manifest, config = _model_file(out, "image_learner.json"), _model_file(out, "model_hyperparameters.json")
    loss = config["output_features"][0]["loss"]
    if manifest["task"] == "binary":
        assert loss["positive_class_weight"] == manifest["training"]["positive_weight"] != 1.0
        return
    vocabulary = _model_file(out, "training_set_metadata.json")["label"]["idx2str"]
    weights = manifest["training"]["class_weights"]
    assert vocabulary == manifest["label_vocabulary"] != sorted(vocabulary)  # the order matters here
    assert loss["class_weights"] == [weights[c] for c in vocabulary]
    assert len(set(loss["class_weights"])) > 1


def test_class_weights_saved_in_another_order_are_refused(runs, tmp_path, capsys):
    _, out = runs(MULTICLASS)
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    config = json.loads(members["model/model_hyperparameters.json"])
    weights = config["output_features"][0]["loss"]["class_weights"]
    weights.reverse()  # e.g. sorted class order instead of Ludwig's: same values, other classes
    assert len(set(weights)) > 1
    members["model/model_hyperparameters.json"] = json.dumps(config).encode()
    code = image_learner_cli.main(["predict", "--model", make_zip(tmp_path / "model.zip", members), "--image-zip",
                                   DEMO_ZIP, "--output-dir", str(tmp_path / "p")])
    assert code == 2
    assert "model_hyperparameters.json: output_features[0].loss.class_weights[" in capsys.readouterr().err


def test_manifest_class_weights_must_cover_ludwigs_vocabulary(runs):
    from importlib.metadata import version

    from image_learner.model import model_manifest
    from image_learner.errors import InputError
    from image_learner.run_files import TOOL_VERSION

    _, out = runs(MULTICLASS)
    manifest = _model_file(out, "image_learner.json")
    model_manifest.check_manifest(manifest, TOOL_VERSION, version("ludwig"))
    manifest["label_vocabulary"] = manifest["label_vocabulary"][:-1]
    with pytest.raises(InputError, match="training.class_weights"):
        model_manifest.check_manifest(manifest, TOOL_VERSION, version("ludwig"))


def _unreadable_dtype(weights: bytes) -> bytes:
    """The safetensors file with one backbone tensor re-typed F6_E2M3 (6 bits a value, same shape): a header
    safetensors' reader accepts, a type torch cannot hold."""
    size = struct.unpack("<Q", weights[:8])[0]
    header, data = json.loads(weights[8:8 + size]), weights[8 + size:]
    metadata = header.pop("__metadata__", None)
    target = next(n for n in sorted(header) if n.endswith("bn1.bias"))
    body, out = b"", {}
    for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
        info = dict(header[name])
        start, end = info["data_offsets"]
        chunk = data[start:end]
        if name == target:
            info["dtype"], chunk = "F6_E2M3", b"\x11" * (int(np.prod(info["shape"])) * 6 // 8)
        info["data_offsets"] = [len(body), len(body) + len(chunk)]
        out[name], body = info, body + chunk
    if metadata:
        out["__metadata__"] = metadata
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@pytest.fixture(scope="module")
def unloadable(tmp_path_factory):
    """tiny_model.zip with an unreadable tensor type: our checks (names, shapes) pass, Ludwig's load fails."""
    with zipfile.ZipFile(TINY_MODEL) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    weights = "model/model_weights.safetensors"
    members[weights] = _unreadable_dtype(members[weights])
    return make_zip(tmp_path_factory.mktemp("unloadable") / "odd_model.zip", members)


def _predict_subprocess(model, tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, CLI, "predict", "--model", str(model), "--image-zip", DEMO_ZIP,
                           "--output-dir", str(tmp_path / "p")], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_model_ludwig_cannot_load_is_exit_2_naming_the_file(unloadable, tmp_path):
    done = _predict_subprocess(unloadable, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("image-learner: error:")]
    assert len(errors) == 1 and errors[0].startswith("image-learner: error: model 'odd_model.zip': ")
    assert os.listdir(tmp_path / "p") == []


def test_the_loader_turns_ludwigs_failure_into_one_line(unloadable, tmp_path):
    """The wrapper alone (model_archive's checks skipped): Ludwig's own error, as one line naming the file."""
    from image_learner.training import ludwig_trainer
    from image_learner.errors import InputError

    with zipfile.ZipFile(unloadable) as archive:
        archive.extractall(tmp_path)
    with pytest.raises(InputError) as raised:
        ludwig_trainer.load_model(str(tmp_path / "model"), "model 'odd_model.zip'")
    message = str(raised.value)
    assert message.startswith("model 'odd_model.zip': it passes Image Learner's checks but Ludwig cannot load it")
    assert "F6_E2M3" in message and "\n" not in message


def test_bitsandbytes_kernels_warning_never_reaches_the_user(tmp_path):
    """bitsandbytes warns only on CPUs with AVX512-BF16, so the logger's level is checked too."""
    from image_learner.training import ludwig_trainer  # noqa: F401 - sets the level before any Ludwig import

    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
    done = _predict_subprocess(TINY_MODEL, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "gemm_4bit" not in output and "No module named 'kernels'" not in output


def test_the_balanced_decision_is_recorded_and_applied(runs):
    """--class-decision balanced: alpha chosen on the validation rows, its offsets in the model (what predict
    subtracts, the test above), the training's predicted labels the adjusted argmax of its probabilities."""
    from image_learner.evaluation import class_decision

    _, out = runs(MULTICLASS)
    summary = json.loads((out / "run_summary.json").read_text())
    record, manifest = summary["class_decision"], _model_file(out, "image_learner.json")
    assert record["rule"] == "balanced" and record["alpha"] in class_decision.ALPHAS
    assert manifest["class_offsets"] == record["offsets"] and len(record["offsets"]) == len(manifest["classes"])
    assert manifest["training"]["options"]["class_decision"] == "balanced"
    table = pd.read_csv(out / "predictions.csv")
    validation = table[table["split"] == "validation"]
    assert record["rows"] == len(validation)
    classes = manifest["classes"]
    expected = np.asarray(classes)[class_decision.decide(table[[f"prob_{c}" for c in classes]].to_numpy(),
                                                         record["offsets"])]
    assert table["predicted_label"].tolist() == expected.tolist()
