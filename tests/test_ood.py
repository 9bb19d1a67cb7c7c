"""The out-of-distribution flag: the threshold's rule and its promise on exchangeable scores, the manifest's
record refused when tampered (exit 2), and a trained model flagging images unlike its training images.

What a tiny model can show honestly: timm's random-initialised ``test_efficientnet`` trained for a few
epochs on the 64 px dermoscopy demo is close to uniform on every image, so no confidence score can tell
dermoscopy from anything else with it. The end-to-end test therefore trains it on a task it does learn in
three epochs (red- against blue-tinted textures) and shows it grey textures (neither red nor blue: on its
decision boundary) against new tinted ones: the flag must catch far more of the grey ones. How well the
score separates real lesions from other pictures with a real backbone is measured in BENCHMARKS.md.
"""

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import image_learner_cli
from conftest import make_zip
from image_learner.data.input_utils import read_output_csv
from image_learner.errors import InputError
from image_learner.evaluation import ood

MANIFEST = "model/image_learner.json"


def test_the_threshold_is_the_conformal_order_statistic():
    proba = np.column_stack([np.linspace(0.5, 1.0, 39), 1 - np.linspace(0.5, 1.0, 39)])
    record = ood.fit(proba, 0.95, "validation")
    # j = floor(0.05 * 40) = 2: the second smallest top-class probability
    assert record == {"score": "max_softmax_probability", "threshold": pytest.approx(np.sort(proba.max(1))[1]),
                      "keep_rate": 0.95, "fitted_on": "validation", "rows": 39}
    assert ood.flags(proba, record).sum() == 1  # strictly below: only the smallest
    assert ood.fit(proba[:18], 0.95, "validation") is None  # 18 rows cannot keep a 95% promise
    assert ood.fit(proba[:19], 0.95, "validation")["threshold"] == pytest.approx(0.5)
    assert ood.fit(proba, 0, "validation") is None  # off
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InputError, match="--ood-keep-rate"):
            ood.check_keep_rate(bad)


@pytest.mark.parametrize("n, keep_rate", [(20, 0.95), (57, 0.9), (200, 0.95)])
def test_in_distribution_false_flags_stay_within_the_promise(n, keep_rate):
    """Scores drawn from one distribution: over many draws of calibration and new rows, the share of new
    rows flagged is at most 1 - keep_rate, and equals j / (n + 1) (ties have probability 0 here)."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(2000):
        top = rng.beta(5, 1, size=n + 50) * 0.5 + 0.5
        proba = np.column_stack([top, 1 - top])
        record = ood.fit(proba[:n], keep_rate, "validation")
        rates.append(ood.flags(proba[n:], record).mean())
    j = np.floor((1 - keep_rate) * (n + 1) + 1e-9)
    assert np.mean(rates) <= 1 - keep_rate + 0.005
    assert np.mean(rates) == pytest.approx(j / (n + 1), abs=0.005)


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _texture(seed: int, tint: str | None) -> bytes:
    """A 32 px random texture; ``tint`` adds a strong red or blue cast, None leaves it grey."""
    rng = np.random.default_rng(seed)
    if tint is None:
        return _png(np.kron(rng.random((8, 8, 1)) * 80 + 60, np.ones((4, 4, 3))))
    pixels = np.kron(rng.random((8, 8, 3)) * 80, np.ones((4, 4, 1)))
    pixels[:, :, {"red": 0, "blue": 2}[tint]] += 140 + rng.random() * 30
    return _png(pixels)


@pytest.fixture(scope="module")
def tinted_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("ood")
    names = {f"img/{i}.png": ("red" if i % 2 else "blue") for i in range(100)}
    make_zip(base / "train.zip", {name: _texture(i, tint) for i, (name, tint) in enumerate(names.items())})
    pd.DataFrame({"image_path": list(names), "label": list(names.values())}).to_csv(base / "train.csv", index=False)
    out = base / "train"
    assert image_learner_cli.main([
        "--csv-file", str(base / "train.csv"), "--image-zip", str(base / "train.zip"), "--output-dir", str(out),
        "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "3",
        "--batch-size", "8", "--learning-rate", "0.01", "--preprocessing-workers", "1", "--no-report",
        "--no-leakage-guard", "--split-probabilities", "0.6", "0.2", "0.2", "--ood-keep-rate", "0.9"]) == 0
    return base


def test_training_stores_the_threshold_set_on_validation_rows(tinted_model):
    out = tinted_model / "train"
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        record = json.loads(archive.read(MANIFEST))["ood"]
    predictions = read_output_csv(str(out / "predictions.csv"))
    validation = predictions[predictions["split"] == "validation"]
    top = np.sort(validation[["prob_blue", "prob_red"]].max(axis=1).to_numpy())
    j = int(np.floor(0.1 * (len(top) + 1)))
    assert record["rows"] == len(top) == 20 and record["fitted_on"] == "validation" and record["keep_rate"] == 0.9
    assert record["threshold"] == pytest.approx(top[j - 1])  # recomputed from predictions.csv
    summary = json.loads((out / "run_summary.json").read_text())["ood"]
    test = predictions[predictions["split"] == "test"]
    assert summary["images"] == len(test)
    assert summary["flagged"] == int((test[["prob_blue", "prob_red"]].max(axis=1) < record["threshold"]).sum())


def test_predict_flags_images_unlike_the_training_images(tinted_model, tmp_path):
    model = str(tinted_model / "train" / "trained_model.zip")
    like = make_zip(tmp_path / "like.zip", {f"new/{i}.png": _texture(1000 + i, "red" if i % 2 else "blue")
                                            for i in range(30)})
    unlike = make_zip(tmp_path / "unlike.zip", {f"grey/{i}.png": _texture(2000 + i, None) for i in range(30)})
    flagged = {}
    for name, images in (("like", like), ("unlike", unlike)):
        out = tmp_path / name
        assert image_learner_cli.main(["predict", "--model", model, "--image-zip", images, "--output-dir",
                                       str(out)]) == 0
        table = read_output_csv(str(out / "predictions.csv"))
        assert table["ood"].dtype == bool
        np.testing.assert_allclose(table["ood_score"], table[["prob_blue", "prob_red"]].max(axis=1))
        summary = json.loads((out / "run_summary.json").read_text())["ood"]
        assert summary["flagged"] == int(table["ood"].sum()) and summary["images"] == 30
        flagged[name] = int(table["ood"].sum())
    assert flagged["unlike"] >= 20 and flagged["like"] <= 8, flagged


def _members(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}


@pytest.mark.parametrize("field, value, message", [
    ("threshold", float("nan"), "ood.threshold is nan"),
    ("threshold", -0.2, "ood.threshold is -0.2"),
    ("threshold", 1e300, "ood.threshold is 1e+300"),
    ("threshold", "0.9", "ood.threshold is '0.9'"),
    ("keep_rate", 1.5, "ood.keep_rate is 1.5"),
    ("fitted_on", "test", "ood.fitted_on is 'test'"),
    ("score", "energy", "ood.score is 'energy'"),
    ("rows", 0, "ood.rows is 0"),
    ("extra", 1, "expected null or an object with fields"),
])
def test_a_tampered_ood_record_exits_2(tinted_model, tmp_path, capsys, field, value, message):
    members = _members(tinted_model / "train" / "trained_model.zip")
    manifest = json.loads(members[MANIFEST])
    manifest["ood"][field] = value
    members[MANIFEST] = json.dumps(manifest).encode()  # NaN written as JSON's NaN token, as an attacker may
    model = make_zip(tmp_path / "model.zip", members)
    images = make_zip(tmp_path / "images.zip", {"a.png": _texture(1, "red")})
    out = tmp_path / "p"
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", images, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert "image_learner.json" in err


def test_models_without_an_ood_record_flag_nothing_and_bad_keep_rates_exit_2(tmp_path, capsys):
    from image_learner.model import model_manifest

    manifest = {"task": "regression", "classes": []}
    with pytest.raises(InputError, match="ood is .*expected null for a regression model"):
        ood.check_record({"score": ood.SCORE}, "regression", 0, model_manifest.MANIFEST)
    assert ood.describe(None) is None and manifest  # a model without the record: nothing flagged, no column
    code = image_learner_cli.main(["--csv-file", str(tmp_path / "x.csv"), "--image-zip", str(tmp_path / "x.zip"),
                                   "--output-dir", str(tmp_path / "o"), "--ood-keep-rate", "1"])
    assert code == 2 and "--ood-keep-rate must be 0 (off) or between 0 and 1" in capsys.readouterr().err
