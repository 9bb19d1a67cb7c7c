"""Training's resized copies as stored PNGs (issue 22 #3): the same pixels reach the network as with the
level-1 copies written before, through Ludwig's own image reading, and the scratch disk stays capped."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from image_learner.data import dataset_prep, image_check
from image_learner.data.image_check import STORED_COPIES_MAX_BYTES, copy_png_level, write_stored_png


def _images(tmp_path, sizes):
    """Random-pixel JPEGs (noise: the hardest case for any encoder) plus a grey PNG, under tmp_path/in."""
    root = tmp_path / "in"
    root.mkdir()
    names = []
    for k, (w, h) in enumerate(sizes):
        pixels = (np.random.default_rng(k).random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{k}.jpg", quality=90)
        names.append(f"{k}.jpg")
    Image.fromarray(np.arange(30 * 20, dtype=np.uint8).reshape(20, 30)).save(root / "grey.png")
    return str(root), names + ["grey.png"]


def _ludwig_decoded(path: str, side: int) -> np.ndarray:
    """What Ludwig's lazy image batches hold for ``path`` under the tool's image preprocessing (interpolate,
    3 channels, no standardisation; ludwig_config.build_ludwig_config)."""
    from ludwig.features.image_feature import ImageFeatureMixin

    decode = ImageFeatureMixin._make_lazy_decode_fn(
        img_width=side, img_height=side, should_resize=True, num_channels=3, resize_method="interpolate",
        user_specified_num_channels=True, standardize_image=None, channel_class_map=torch.Tensor([]),
        default_image=np.zeros((3, side, side), np.float32))
    return decode(path)


def test_stored_png_is_a_png_of_the_same_pixels(tmp_path):
    pixels = (np.random.default_rng(0).random((5, 7, 3)) * 255).astype(np.uint8)
    write_stored_png(str(tmp_path / "a.png"), Image.fromarray(pixels))
    with Image.open(tmp_path / "a.png") as img:
        assert img.format == "PNG" and img.mode == "RGB" and np.array_equal(np.asarray(img), pixels)
    # stored: 5 rows of 1 filter byte + 21 bytes, plus 68 (signature 8, IHDR 25, IDAT's 12 + zlib's 2 + 4 and
    # one stored block's 5, IEND 12)
    assert os.path.getsize(tmp_path / "a.png") == 5 * 22 + 68
    with pytest.raises(ValueError):
        write_stored_png(str(tmp_path / "b.png"), Image.fromarray(pixels[..., 0]))


@pytest.mark.parametrize("side", [32, 61])
def test_training_copies_give_ludwig_the_same_arrays_as_level_one(tmp_path, side):
    root, names = _images(tmp_path, [(40, 30), (61, 61), (200, 150)])
    assert copy_png_level(len(names), side) == 0
    stored = image_check.check_images(root, names, str(tmp_path / "stored"), resize_to=side, png_level=0)
    level1 = image_check.check_images(root, names, str(tmp_path / "level1"), resize_to=side, png_level=1)
    assert stored.converted == level1.converted and stored.sizes == level1.sizes
    assert stored.health == level1.health
    for a, b in zip(stored.hashes + stored.thumbs, level1.hashes + level1.thumbs):
        assert np.array_equal(a, b)
    for a, b in zip(stored.paths, level1.paths):
        if a.endswith(".png") and "stored" in a:  # a copy was written (61 px originals at 61 px are read as they are)
            assert os.path.getsize(a) > os.path.getsize(b)
        x, y = _ludwig_decoded(a, side), _ludwig_decoded(b, side)
        assert x.shape == (3, side, side) and x.dtype == np.float32
        assert np.array_equal(x, y)  # bit for bit: the same numbers reach the network


def test_dataset_prep_writes_stored_copies_within_the_disk_cap(tmp_path, monkeypatch):
    root, names = _images(tmp_path, [(40, 30), (50, 50)])
    matched = pd.DataFrame({"image_file": names})
    stored_size = 32 * (1 + 32 * 3) + 68
    kept, _ = dataset_prep._check_images(matched, root, str(tmp_path / "c"), 0.05, resize_to=32)
    assert [os.path.getsize(p) for p in kept["read_path"]] == [stored_size] * 3  # stored
    # any other caller (the search's copies, a benchmark) gets the same copies unless it asks for a level
    direct = image_check.check_images(root, names, str(tmp_path / "e"), resize_to=32)
    assert [os.path.getsize(p) for p in direct.paths] == [stored_size] * 3
    monkeypatch.setattr(image_check, "STORED_COPIES_MAX_BYTES", 3 * 32 * 32 * 3 - 1)  # one byte short
    kept, _ = dataset_prep._check_images(matched, root, str(tmp_path / "d"), 0.05, resize_to=32)
    assert all(os.path.getsize(p) != stored_size for p in kept["read_path"])  # deflated
    direct = image_check.check_images(root, names, str(tmp_path / "f"), resize_to=32)
    assert all(os.path.getsize(p) != stored_size for p in direct.paths)


def test_copy_level_caps_the_scratch_disk():
    side = 224
    most = STORED_COPIES_MAX_BYTES // (side * side * 3)
    assert copy_png_level(most, side) == 0 and copy_png_level(most + 1, side) == 1
    assert copy_png_level(10_000, 224) == 0 and copy_png_level(10_000, 384) == 1
    assert copy_png_level(10, None) == 1  # no resizing: converted copies of any size stay deflated
