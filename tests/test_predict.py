"""Predict with a saved model: round trip equals training's predictions; offline; foreign ZIPs refused."""

import hashlib
import json
import os
import signal
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, make_zip, stop_and_check, wait_for_line

TINY = ["--model-name", "test_efficientnet", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
        "--preprocessing-workers", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Trained from a local weights file that is deleted afterwards: prediction must not need it."""
    import timm
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("predict")
    weights = base / "test_efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(weights))
    out = base / "train"
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--use-pretrained", "--pretrained-weights", str(weights)]) == 0
    (base / "weights.sha256").write_text(hashlib.sha256(weights.read_bytes()).hexdigest())
    os.remove(weights)
    return out


def _predict(out, model, *extra):
    return image_learner_cli.main(["predict", "--model", str(model), "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(out), *extra])


def test_round_trip_reproduces_training_predictions_offline(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt would fail
    assert _predict(tmp_path / "p", trained / "trained_model.zip", "--csv-file", DEMO_CSV) == 0
    before = pd.read_csv(trained / "predictions.csv")
    after = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert after["image"].tolist() == before["image"].tolist()
    probs = [c for c in before.columns if c.startswith("prob_")]
    assert [c for c in after.columns if c.startswith("prob_")] == probs
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)
    assert (after["predicted_label"] == before["predicted_label"]).all()
    assert (tmp_path / "p" / "metrics.json").exists()  # the CSV has true labels: evaluated too
    report = (tmp_path / "p" / "report.html").read_text()
    assert "none: a saved model applied to new images" in report and "Per class (test)" in report


def test_without_csv_every_image_of_the_zip_is_classified(trained, tmp_path):
    assert _predict(tmp_path / "p", trained / "trained_model.zip") == 0
    predictions = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(predictions) == 140 and "true_label" not in predictions
    assert not (tmp_path / "p" / "metrics.json").exists()


def _copy_model_zip(trained, path, extra=None, drop=None):
    with zipfile.ZipFile(trained / "trained_model.zip") as source:
        members = {n: source.read(n) for n in source.namelist() if not n.endswith("/") and n != drop}
    members.update(extra or {})
    return make_zip(path, members)


@pytest.mark.parametrize("extra, drop, message", [
    ({"model/evil.pkl": b"cos\nsystem\n"}, None, "files an Image Learner model never has"),
    (None, "model/image_learner.json", "not an Image Learner model ZIP"),
    ({"model/image_learner.json": b'{"format": "image-learner-model", "format_version": 99}'}, None, "version 99"),
])
def test_foreign_or_tampered_models_are_refused(trained, tmp_path, capsys, extra, drop, message):
    model = _copy_model_zip(trained, tmp_path / "model.zip", extra, drop)
    assert _predict(tmp_path / "p", model) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path / "p") == []


def test_other_sizes_and_modes_are_handled_as_in_training(trained, tmp_path):
    """An image saved as RGBA, CMYK or 16-bit grey, or at another size, is classified after the same
    conversion as in training: a fully opaque RGBA copy gives the RGB picture's probabilities."""
    import io

    from PIL import Image

    with zipfile.ZipFile(DEMO_ZIP) as archive:
        picture = Image.open(io.BytesIO(archive.read("images/ISIC_0025319_orig.jpg"))).convert("RGB")

    def encoded(img, fmt):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    grey16 = Image.fromarray((np.asarray(picture.convert("L"), dtype=np.uint16) * 257))
    members = {"rgb.png": encoded(picture, "PNG"), "rgba.png": encoded(picture.convert("RGBA"), "PNG"),
               "cmyk.jpg": encoded(picture.convert("CMYK"), "JPEG"), "grey16.png": encoded(grey16, "PNG"),
               "large.png": encoded(picture.resize((300, 300)), "PNG")}
    images = make_zip(tmp_path / "odd.zip", members)
    assert image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", images,
                                   "--output-dir", str(tmp_path / "p")]) == 0
    predictions = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image")
    assert sorted(predictions.index) == sorted(members)
    probs = predictions.filter(like="prob_")
    np.testing.assert_allclose(probs.loc["rgba.png"], probs.loc["rgb.png"], atol=1e-5)


def test_prediction_logs_its_stages_and_skips_files_that_are_not_images(trained, tmp_path, capsys):
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    members.update({"README.txt": b"about these images", "images/run.sh": b"#!/bin/sh"})
    images = make_zip(tmp_path / "images.zip", members)
    assert image_learner_cli.main(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", images,
                                   "--output-dir", str(tmp_path / "p"), "--batch-size", "8"]) == 0
    log = capsys.readouterr().out
    for line in ("unpacking and validating the model done in", "unpacking images done in",
                 "2 file(s) in the image ZIP are not images and were skipped (README.txt, images/run.sh)",
                 "loading the model done in", "predicting 140 images …",
                 "predicted 128 of 140 images (91%) in", "predicted 140 of 140 images (100%) in",
                 "predicting 140 images done in"):
        assert f"[image-learner] {line}" in log, log
    summary = json.loads((tmp_path / "p" / "run_summary.json").read_text())
    assert summary["dataset"]["non_image_files_skipped"] == 2 and summary["dataset"]["images_in_zip"] == 140
    # the images are checked (decoded, converted, resized) while they are predicted: no stage of their own
    assert {"unpacking images", "predicting 140 images", "total"} <= set(summary["timings_s"])
    assert len(pd.read_csv(tmp_path / "p" / "predictions.csv")) == 140


def test_a_stopped_prediction_leaves_nothing(trained, tmp_path, start_cli):
    out = tmp_path / "p"
    process = start_cli(["predict", "--model", str(trained / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                         "--csv-file", DEMO_CSV, "--output-dir", str(out), "--batch-size", "8"])
    wait_for_line(process, "[image-learner] predicted 128 of 140 images")  # batches of 8, chunks of 16 batches
    stop_and_check(process, signal.SIGTERM, out, tmp_path)


def test_the_model_zip_keeps_the_weights_file_name_and_hash_not_the_trainers_path(trained):
    """--pretrained-weights was typed as an absolute path on the training machine: the shared model (and
    config.yaml, run_summary.json's options) keep "<file name> sha256:<hash>"; predict (above) needs neither."""
    record = f"test_efficientnet.safetensors sha256:{(trained.parent / 'weights.sha256').read_text()}"
    training_dir = str(trained.parent)
    with zipfile.ZipFile(trained / "trained_model.zip") as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    assert sorted(members) == sorted(f"model/{name}" for name in ("image_learner.json", "model_hyperparameters.json",
        "training_set_metadata.json", "model_weights.safetensors", "MODEL_CARD.md"))
    for name, data in members.items():
        assert training_dir.encode() not in data and b"/tmp/" not in data, name
    manifest = json.loads(members["model/image_learner.json"])
    config = json.loads(members["model/model_hyperparameters.json"])
    assert manifest["training"]["options"]["pretrained_weights"] == record
    assert config["input_features"][0]["encoder"]["pretrained_weights"] == record
    import yaml

    assert yaml.safe_load((trained / "config.yaml").read_text())["input_features"][0]["encoder"][
        "pretrained_weights"] == record
    summary = json.loads((trained / "run_summary.json").read_text())
    assert summary["training"]["pretrained_weights"] == record
    assert summary["model"]["weights_source"] == "local file test_efficientnet.safetensors"


def test_a_manifest_with_a_weights_path_is_refused(trained, tmp_path, capsys):
    """A model whose options name a path (as older versions wrote) or a bare name without a hash is refused."""
    with zipfile.ZipFile(trained / "trained_model.zip") as source:
        members = {n: source.read(n) for n in source.namelist() if not n.endswith("/")}
    manifest = json.loads(members["model/image_learner.json"])
    for k, value in enumerate(["/home/trainer/weights.safetensors", "weights.safetensors"]):
        manifest["training"]["options"]["pretrained_weights"] = value
        members["model/image_learner.json"] = json.dumps(manifest).encode()
        assert _predict(tmp_path / f"p{k}", make_zip(tmp_path / f"m{k}.zip", members)) == 2
        err = capsys.readouterr().err
        assert "training.options.pretrained_weights is" in err and "sha256" in err and "Traceback" not in err
