"""Predict runs the saved network without Ludwig (model/inference_network.py, issue 22): the same numbers as
Ludwig's own load + predict on the same images (1e-5), the weights file held to the network's tensors
exactly (missing, extra, reshaped or retyped tensors refused with exit 2, one line naming the file), and no
Ludwig module imported by a predict run. Models: test-data/tiny_model.zip, tiny_regression_model.zip and a
binary one trained once here."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, ROOT, TEST_DATA, make_zip

MODELS = {"multiclass": os.path.join(TEST_DATA, "tiny_model.zip"),
          "regression": os.path.join(TEST_DATA, "tiny_regression_model.zip")}
WEIGHTS = "model/model_weights.safetensors"
DECODER_BIAS = "output_features.module_dict.label__ludwig.decoder_obj.dense.dense.bias"


def _members(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}


@pytest.fixture(scope="module")
def model_zips(tmp_path_factory):
    out = tmp_path_factory.mktemp("binary") / "train"
    assert image_learner_cli.main([
        "--csv-file", os.path.join(TEST_DATA, "ham10000_demo_binary.csv"), "--image-zip", DEMO_ZIP,
        "--output-dir", str(out), "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32",
        "--epochs", "1", "--batch-size", "16", "--preprocessing-workers", "1", "--class-weights", "balanced",
        "--no-report"]) == 0  # balanced: Ludwig keeps the loss's pos_weight in the weights file
    return {**MODELS, "binary": str(out / "trained_model.zip")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Demo JPEGs (64 px: resized to the model's 32), and the cases training's check treats apart: a plain
    JPEG already 32 x 32 (not copied: Ludwig decodes the file itself), an RGBA PNG, an EXIF-rotated JPEG."""
    root = tmp_path_factory.mktemp("images")
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[::7]
        archive.extractall(root, members=names)
    picture = Image.open(root / names[0]).convert("RGB")
    picture.resize((32, 32)).save(root / "small.jpg", quality=90)
    picture.convert("RGBA").save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.resize((48, 40)).save(root / "rotated.jpg", exif=exif)
    return str(root), names + ["small.jpg", "rgba.png", "rotated.jpg"]


def _unpacked(model_zip, dest):
    with zipfile.ZipFile(model_zip) as archive:
        archive.extractall(dest)
    model_dir = os.path.join(dest, "model")
    with open(os.path.join(model_dir, "image_learner.json")) as handle:
        return model_dir, json.load(handle)


def _ludwig_predictions(model_dir, manifest, root, files, work):
    """The path predict took before: training's image check writes the copies, Ludwig loads and predicts."""
    import pandas as pd

    from image_learner.data.image_check import check_images
    from image_learner.training import ludwig_trainer

    checked = check_images(root, files, work, resize_to=manifest["image_size"], health=False, fingerprints=False)
    table = pd.DataFrame({"image_path": checked.paths})
    model = ludwig_trainer.load_model(model_dir)
    if manifest["task"] == "regression":
        scaling = manifest["target_scaling"]
        return ludwig_trainer.predict_values(model, table, 4, scaling["mean"], scaling["std"])
    return ludwig_trainer.predict_probabilities(model, table, manifest["classes"], manifest["task"], 4)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_the_network_gives_ludwigs_predictions(model_zips, images, tmp_path, kind):
    from image_learner.model import inference_network as net
    from image_learner.model.model_archive import offline_hub

    root, files = images
    model_dir, manifest = _unpacked(model_zips[kind], tmp_path)
    with offline_hub():
        expected = _ludwig_predictions(model_dir, manifest, root, files, str(tmp_path / "copies"))
        network = net.load(manifest, os.path.join(model_dir, "model_weights.safetensors"))
    pixels = np.stack([net.image_pixels(os.path.join(root, f), manifest["image_size"])[0] for f in files])
    raw = np.concatenate([net.run(network, pixels[k:k + 3]) for k in range(0, len(files), 3)])  # other batches
    if kind == "regression":
        scaling = manifest["target_scaling"]
        found = raw.astype(float) * scaling["std"] + scaling["mean"]
        assert np.ptp(found) > 0
    else:
        found = net.class_columns(raw, manifest)
        assert found.shape == (len(files), len(manifest["classes"]))
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["multiclass", "multiclass weighted", "binary", "regression"])
def test_the_expected_tensors_are_ludwigs(model_zips, tmp_path, kind):
    """The reference of the weights check: the network on the meta device, under Ludwig's names, has exactly
    the tensors (names, shapes, dtypes) of Ludwig's own ECD built from the saved config (balanced class
    weights: the loss's weight tensor too)."""
    import torch
    from ludwig.models.ecd import ECD
    from ludwig.schema.model_types.base import ModelConfig

    from image_learner.model import inference_network, model_weights
    from image_learner.training import ludwig_trainer

    model_dir, manifest = _unpacked(model_zips[kind.split()[0]], tmp_path)
    with open(os.path.join(model_dir, "model_hyperparameters.json")) as handle:
        config = json.load(handle)
    if kind == "multiclass weighted":
        vocabulary = manifest["label_vocabulary"]
        manifest["training"]["class_weights"] = {c: 1.0 + k for k, c in enumerate(vocabulary)}
        config["output_features"][0]["loss"]["class_weights"] = [1.0 + k for k in range(len(vocabulary))]
    ludwig_trainer.register_with_ludwig()
    with torch.device("meta"):  # the model LudwigModel.load builds from this config, shapes only
        ecd = ECD(ModelConfig.from_dict(config))
    ludwig = model_weights.expected_tensors(ecd.state_dict(keep_vars=True))
    ours = inference_network.expected_tensors(manifest)
    assert ours.tensors == ludwig.tensors and ours.tied == ludwig.tied
    assert (ours.data_bytes, ours.parameters) == (ludwig.data_bytes, ludwig.parameters)


def _tensors(members):
    from safetensors.numpy import load

    return load(members[WEIGHTS])


def _saved(members, tensors):
    from safetensors.numpy import save

    return {**members, WEIGHTS: save(tensors)}


def _missing(members):
    tensors = _tensors(members)
    del tensors[DECODER_BIAS]
    return _saved(members, tensors)


def _extra(members):
    tensors = _tensors(members)
    tensors[DECODER_BIAS.replace(".bias", ".scale")] = tensors[DECODER_BIAS]
    return _saved(members, tensors)


def _reshaped(members):
    tensors = _tensors(members)
    tensors[DECODER_BIAS] = np.concatenate([tensors[DECODER_BIAS]] * 2)
    return _saved(members, tensors)


def _retyped(members):
    tensors = _tensors(members)
    tensors[DECODER_BIAS] = tensors[DECODER_BIAS].astype(np.float64)
    return _saved(members, tensors)


TAMPERED = {
    "missing tensor": (_missing, f"1 of its 88 tensors are missing ({DECODER_BIAS} …)"),
    "extra tensor": (_extra, "it holds 1 tensor(s) the model has not (output_features.module_dict.label__ludwig."
                             "decoder_obj.dense.dense.scale …)"),
    "wrong shape": (_reshaped, f"{DECODER_BIAS} has shape [14], expected [7]"),
    "wrong dtype": (_retyped, f"{DECODER_BIAS} has dtype F64, expected F32"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_weights_exit_2_with_one_line_naming_the_file(tmp_path, capsys, case):
    tamper, detail = TAMPERED[case]
    model = make_zip(tmp_path / "model.zip", tamper(_members(MODELS["multiclass"])))
    out = tmp_path / "p"
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", DEMO_ZIP, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert err.startswith("image-learner: error: model 'model.zip': model_weights.safetensors does not fit the "
                          "model its config describes: ") and detail in err
    assert os.listdir(out) == []


def test_a_predict_run_imports_no_ludwig_and_its_report_has_grad_cam(tmp_path):
    """A fresh process predicts with true labels (metrics and report, Grad-CAM on the network included):
    no module of Ludwig's is imported at any point."""
    script = ("import sys, image_learner_cli\n"
              f"code = image_learner_cli.main(['predict', '--model', {MODELS['multiclass']!r}, '--image-zip', "
              f"{DEMO_ZIP!r}, '--csv-file', {DEMO_CSV!r}, '--output-dir', {str(tmp_path / 'p')!r}])\n"
              "print('RESULT', code, sorted(m for m in sys.modules if m == 'ludwig' or m.startswith('ludwig.')))\n")
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert "RESULT 0 []" in done.stdout, (done.stdout + done.stderr)[-3000:]
    report = (tmp_path / "p" / "report.html").read_text()
    assert report.count('alt="saliency of') == 6


def test_images_are_decoded_in_memory_as_trainings_copies(images, tmp_path):
    """The pixels fed to the network are the PNG copies training's check writes (resized or converted ones),
    and torchvision's decoding of a plain JPEG already at the model's size (which is not copied)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    from image_learner.data.image_check import check_images
    from image_learner.model.inference_network import image_pixels

    root, files = images
    checked = check_images(root, files, str(tmp_path / "copies"), resize_to=32, health=False, fingerprints=False)
    for name, path in zip(files, checked.paths):
        pixels, _ = image_pixels(os.path.join(root, name), 32)
        if path == os.path.join(root, name):  # read as it is
            assert name == "small.jpg"
            wanted = decode_image(read_file(path), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        else:
            with Image.open(path) as copy:
                wanted = np.asarray(copy.convert("RGB"))
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        np.testing.assert_array_equal(pixels, wanted)
    assert image_pixels(os.path.join(root, "rotated.jpg"), 32)[1] == ["EXIF orientation 6 applied"]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        image_pixels(str(tmp_path / "broken.jpg"), 32)


def test_out_of_memory_while_predicting_names_the_batch_and_image_size(tmp_path, capsys, monkeypatch):
    import torch

    from image_learner.model import inference_network

    def out_of_memory(network, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(inference_network, "run", out_of_memory)
    out = tmp_path / "p"
    code = image_learner_cli.main(["predict", "--model", MODELS["multiclass"], "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(out), "--batch-size", "8"])
    err = capsys.readouterr().err
    assert code == 137, err[-2000:]
    assert "out of memory while predicting" in err and "at batch size 8 and image size 32 px" in err
    assert os.listdir(out) == []
