"""Test-time augmentation (evaluation/tta.py): exact views, one definition for files and batches, the mean
over views; and predict's choice between the model's own views and the user's."""

import numpy as np
import pytest
from PIL import Image

from image_learner.evaluation import tta


def _image(seed=0, h=5, w=5):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode, n", [("none", 1), ("flips", 2), ("dihedral", 8)])
def test_each_mode_has_its_views_the_plain_one_first_and_all_distinct(mode, n):
    views = tta.views(mode)
    assert len(views) == n and views[0] == (0, False)
    pixels = _image()
    seen = {tta.view_array(pixels, v).tobytes() for v in views}
    assert len(seen) == n  # no view repeats another (a random image has no symmetry)


def test_an_unknown_mode_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="--tta"):
        tta.views("rotations")


def test_views_are_pils_exact_transposes():
    pixels = _image(1)
    img = Image.fromarray(pixels)
    T = Image.Transpose
    expected = {(0, True): T.FLIP_LEFT_RIGHT, (1, False): T.ROTATE_90, (2, False): T.ROTATE_180,
                (3, False): T.ROTATE_270, (1, True): None}
    for view, transpose in expected.items():
        if transpose is None:  # a quarter turn, then the mirror
            want = np.asarray(img.transpose(T.ROTATE_90).transpose(T.FLIP_LEFT_RIGHT))
        else:
            want = np.asarray(img.transpose(transpose))
        np.testing.assert_array_equal(tta.view_array(pixels, view), want)


def test_a_batch_view_is_the_view_of_each_image():
    batch = np.stack([_image(s) for s in range(3)])
    for view in tta.views("dihedral"):
        np.testing.assert_array_equal(tta.batch_view(batch, view), np.stack([tta.view_array(b, view) for b in batch]))


def test_view_copies_hold_the_views_pixels_and_the_plain_view_is_the_file_itself(tmp_path):
    src = tmp_path / "a.png"
    pixels = _image(2, 6, 6)
    Image.fromarray(pixels).save(src)
    assert tta.view_copies([str(src)], (0, False), str(tmp_path / "v0")) == [str(src)]
    for view in tta.views("dihedral")[1:]:
        [copy] = tta.view_copies([str(src)], view, str(tmp_path / f"v{view[0]}{int(view[1])}"))
        np.testing.assert_array_equal(np.asarray(Image.open(copy)), tta.view_array(pixels, view))


def test_averaging_is_the_mean_over_views_and_makes_a_mirror_sensitive_model_mirror_invariant():
    # a "model" that looks only at the left half: its mean over the flips is the same for an image and its mirror
    def model(batch):
        left = batch[:, :, : batch.shape[2] // 2].mean(axis=(1, 2, 3)) / 255
        return np.stack([left, 1 - left], axis=1)

    batch = np.stack([_image(s, 4, 4) for s in range(4)])
    mirrored = tta.batch_view(batch, (0, True))
    def mean_over_flips(b):
        return tta.averaged([model(tta.batch_view(b, v)) for v in tta.views("flips")])

    assert not np.allclose(model(batch), model(mirrored))
    np.testing.assert_allclose(mean_over_flips(batch), mean_over_flips(mirrored))
    np.testing.assert_allclose(tta.averaged([np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])]), [[0.4, 0.6]])


def test_describe_names_the_views():
    assert tta.describe("none").startswith("none")
    assert tta.describe("flips") == "flips: probabilities averaged over 2 views (the image and its left-right mirror)"
    assert "8 views" in tta.describe("dihedral")


def test_predict_uses_the_models_views_unless_told_and_warns_when_told_otherwise(monkeypatch):
    from image_learner.model import predictor

    said = []
    monkeypatch.setattr(predictor, "log", said.append)
    manifest = {"training": {"options": {"tta": "dihedral"}}}
    assert predictor.tta_of(None, manifest) == "dihedral" and not any("WARNING" in s for s in said)
    assert predictor.tta_of("none", manifest) == "none"
    assert any(s.startswith("WARNING: --tta none differs from the model's 'dihedral'") for s in said)
