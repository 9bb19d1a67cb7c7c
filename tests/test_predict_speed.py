"""Issue 22, predict in seconds: the run reported as fixed seconds + images/s, the config never
schema-validated by Ludwig (four times per run before, then twice; now the network runs without Ludwig:
tests/test_inference_network.py), the image check without leakage hashes, and fewer prediction chunks."""

import cProfile
import json
import os
import pstats
import zipfile

import pytest
from PIL import Image

import image_learner_cli
from conftest import DEMO_ZIP, make_zip
from image_learner.data.image_check import check_images
from image_learner.model.predictor import with_rates

TINY_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-data", "tiny_model.zip")


def _schema_checks(profile: cProfile.Profile) -> int:
    """Calls of Ludwig's JSON-schema validation (ludwig/config_validation/validation.py's check_schema),
    counted by the profiler: nothing of Ludwig's is wrapped or replaced."""
    stats = pstats.Stats(profile).stats
    return sum(calls for (file, _, name), (calls, *_rest) in stats.items()
               if name == "check_schema" and file.replace(os.sep, "/").endswith("ludwig/config_validation/validation.py"))


def test_predict_reports_fixed_seconds_and_images_per_second_and_never_validates_ludwigs_schema(tmp_path):
    from image_learner.training import ludwig_trainer

    with zipfile.ZipFile(DEMO_ZIP) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    images = make_zip(tmp_path / "images.zip", dict(list(members.items())[:24]))
    ludwig_trainer._rendered_json.cache_clear()  # a rendering cached by an earlier test would hide one call
    profile = cProfile.Profile()
    profile.enable()
    try:
        code = image_learner_cli.main(["predict", "--model", TINY_MODEL, "--image-zip", images,
                                       "--output-dir", str(tmp_path / "p"), "--batch-size", "8"])
    finally:
        profile.disable()
    assert code == 0
    # before issue 22: four (ours, the meta-device model's, and twice inside LudwigModel.load); then two
    assert _schema_checks(profile) == 0
    timings = json.loads((tmp_path / "p" / "run_summary.json").read_text())["timings_s"]
    # the images are decoded and resized while the network predicts: one stage
    assert "checking 24 images" not in timings
    per_image = timings["unpacking images"] + timings["predicting 24 images"]
    assert timings["per_image_stages_s"] == pytest.approx(per_image, abs=0.02)
    assert timings["fixed_s"] == pytest.approx(timings["total"] - per_image, abs=0.02)
    assert timings["fixed_s"] >= timings["loading the model"] > 0
    assert timings["images_per_s"] == pytest.approx(24 / per_image, rel=0.02)


def test_with_rates_splits_the_total_into_fixed_and_per_image_stages():
    timings = {"unpacking and validating the model": 3.0, "unpacking images": 1.0, "checking 100 images": 2.0,
               "loading the model": 1.5, "predicting 100 images": 2.0, "total": 10.0}
    rated = with_rates(timings, 100)
    assert rated["per_image_stages_s"] == 5.0 and rated["fixed_s"] == 5.0 and rated["images_per_s"] == 20.0
    assert with_rates({"total": 1.0}, 0)["images_per_s"] is None


def test_the_image_check_without_fingerprints_skips_the_hashes_and_keeps_the_copies(tmp_path):
    root = tmp_path / "in"
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")][:4]
        archive.extractall(root, members=names)
    plain = check_images(str(root), names, str(tmp_path / "a"), resize_to=32, fingerprints=False)
    hashed = check_images(str(root), names, str(tmp_path / "b"), resize_to=32)
    assert plain.hashes == [] and plain.thumbs == [] and len(hashed.hashes) == 4
    assert plain.sizes == hashed.sizes and plain.bad == hashed.bad == {}
    for a, b in zip(plain.paths, hashed.paths):
        assert open(a, "rb").read() == open(b, "rb").read()  # the same resized copies
    deflated = check_images(str(root), names, str(tmp_path / "c"), resize_to=32, fingerprints=False, png_level=1)
    for a, b in zip(plain.paths, deflated.paths):  # by default stored, not deflated: bigger files, the same pixels
        assert os.path.getsize(a) > os.path.getsize(b)
        with Image.open(a) as x, Image.open(b) as y:
            assert x.tobytes() == y.tobytes()


def test_prediction_chunks_are_at_least_sixteen_batches():
    import pandas as pd

    from image_learner.training import ludwig_trainer

    calls = []

    class Model:
        config = {}

        def predict(self, dataset, batch_size):
            calls.append(len(dataset))
            return pd.DataFrame({"x": range(len(dataset))}), None

    table = pd.DataFrame({ludwig_trainer.IMAGE_FEATURE: [f"{k}.png" for k in range(1500)]})
    assert len(ludwig_trainer._predict_chunks(Model(), table, 32)) == 1500
    assert calls == [512, 512, 476]  # before issue 22: ten chunks of 160
