"""A model that travels: trained_model.zip carries MODEL_CARD.md and, with --export-onnx, a model.onnx whose
outputs (onnxruntime) match the tool's predictions on the test images; predict still accepts only our ZIP."""

import os
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA, make_zip
from image_learner.model import onnx_export

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "40", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]
TOLERANCE = 1e-4


def _train(out, csv, *extra):
    code = image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--no-report", "--export-onnx", "--data-licence", "CC BY-NC 4.0 (test)", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("multiclass") / "out", DEMO_CSV)


@pytest.fixture(scope="module", params=["multiclass", "binary", "regression"])
def trained(request, tmp_path_factory, multiclass):
    if request.param == "multiclass":
        return multiclass
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "binary":
        table = pd.read_csv(DEMO_CSV)
        csv = base / "mel_nv.csv"
        table[table["label"].isin(["mel", "nv"])].to_csv(csv, index=False)
        return _train(base / "out", str(csv))
    return _train(base / "out", os.path.join(TEST_DATA, "ham10000_demo_age.csv"), "--target-column", "age")


def _onnx_outputs(out, images, rows, tmp_path):
    import onnxruntime

    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        archive.extract("model/model.onnx", tmp_path)
    session = onnxruntime.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = onnx_export.image_tensor([str(images / f) for f in rows["image_file"]], 40)
    assert pixels.dtype == np.float32 and pixels.shape == (len(rows), 3, 40, 40)
    assert [i.name for i in session.get_inputs()] == ["image"]
    return session.run(None, {"image": pixels})[0]


def test_onnx_outputs_match_the_tools_predictions_on_the_test_images(trained, images, tmp_path):
    predictions = pd.read_csv(trained / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    assert len(test) >= 8
    columns = ([c for c in predictions.columns if c.startswith("prob_")] if "predicted_value" not in predictions
               else ["predicted_value"])
    got = _onnx_outputs(trained, images, test, tmp_path)
    expected = test[columns].to_numpy(dtype=float)
    assert got.shape == expected.shape
    difference = float(np.abs(got - expected).max())
    print(f"ONNX parity ({trained.parent.name}): max |onnxruntime - predictions.csv| = {difference:.2e} "
          f"over {len(test)} test images x {len(columns)} columns")
    assert difference < TOLERANCE


def test_the_zip_carries_a_model_card_and_predict_accepts_it(multiclass, tmp_path):
    with zipfile.ZipFile(multiclass / "trained_model.zip") as archive:
        names = sorted(archive.namelist())
        card = archive.read("model/MODEL_CARD.md").decode("utf-8")
        compression = {info.filename: info.compress_type for info in archive.infolist()}
    assert "model/MODEL_CARD.md" in names and "model/model.onnx" in names
    # the weights stored (they barely deflate: model_zip.py), the rest deflated; predict (below) reads both
    assert {n for n, c in compression.items() if c == zipfile.ZIP_STORED} == {"model/model_weights.safetensors",
                                                                               "model/model.onnx"}
    assert all(n.startswith("model/") for n in names)
    assert "Licence of the data, as the user stated it: CC BY-NC 4.0 (test)" in card
    assert "input 'image': float32 N×3×40×40, RGB scaled to [0, 1]" in card
    assert "Computed on the held-out test rows" in card and "not a medical device" in card
    code = image_learner_cli.main(["predict", "--model", str(multiclass / "trained_model.zip"), "--image-zip",
                                   DEMO_ZIP, "--csv-file", DEMO_CSV, "--output-dir", str(tmp_path / "p")])
    assert code == 0
    before = pd.read_csv(multiclass / "predictions.csv")
    after = pd.read_csv(tmp_path / "p" / "predictions.csv")
    probs = [c for c in before.columns if c.startswith("prob_")]
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)


@pytest.mark.parametrize("member, data, message", [
    ("model/MODEL_CARD.md", b"x" * ((1 << 20) + 1), "MODEL_CARD.md is 1,048,577 bytes; an Image Learner model's "
                                                      "is at most 1,048,576"),
    ("model/MODEL_CARD.md", b"\xff\xfe binary", "MODEL_CARD.md is not UTF-8 text"),
    ("model/model.onnx.py", b"import os", "files an Image Learner model never has (model/model.onnx.py)"),
    ("MODEL_CARD.md", b"# outside the model folder", "files an Image Learner model never has (MODEL_CARD.md)"),
])
def test_a_card_or_file_beyond_the_rules_is_refused(multiclass, tmp_path, capsys, member, data, message):
    with zipfile.ZipFile(multiclass / "trained_model.zip") as source:
        members = {n: source.read(n) for n in source.namelist() if not n.endswith("/")}
    members[member] = data
    model = make_zip(tmp_path / "model.zip", members)
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert os.listdir(tmp_path / "p") == []


def test_export_onnx_without_the_onnx_package_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without the onnx extra looks like
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--export-onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "--export-onnx needs the onnx package: pip install 'image-learner[onnx]'" in err
    assert "Traceback" not in err and (not out.exists() or not any(out.iterdir()))
