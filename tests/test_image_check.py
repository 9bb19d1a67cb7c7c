"""Odd and broken images: converted to what a person sees, or named and skipped by the documented rule."""

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_learner.data import dataset_prep
from image_learner.data.image_check import check_image, check_images
from image_learner.errors import InputError


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8), "RGB")


def _exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    return _save(_rgb(1), "JPEG", exif=exif)


def _sixteen_bit():
    values = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    return _save(Image.fromarray(values), "PNG")  # uint16 -> mode I;16


CASES = {
    "rgb.jpg": (lambda: _save(_rgb(), "JPEG"), []),
    "grey.png": (lambda: _save(_rgb().convert("L"), "PNG"), ["L converted to RGB"]),
    "rgba.png": (lambda: _save(_rgb().convert("RGBA"), "PNG"), ["transparency composited on white"]),
    "palette.png": (lambda: _save(_rgb().convert("P"), "PNG"), ["P converted to RGB"]),
    "cmyk.jpg": (lambda: _save(_rgb().convert("CMYK"), "JPEG"), ["CMYK converted to RGB"]),
    "sixteen.png": (_sixteen_bit, ["scaled 16-bit/float to 8-bit", "L converted to RGB"]),
    "exif.jpg": (_exif_rotated, ["EXIF orientation 6 applied"]),
    "scan.tif": (lambda: _save(_rgb(), "TIFF"), ["TIFF re-encoded as PNG"]),
    "tiny.png": (lambda: _save(_rgb(size=(2, 2)), "PNG"), []),
}


@pytest.mark.parametrize("name", CASES)
def test_odd_images_become_8bit_rgb(tmp_path, name):
    make, expected = CASES[name]
    path = tmp_path / name
    path.write_bytes(make())
    img, changes = check_image(str(path))
    assert img.mode == "RGB"
    assert changes == expected


def test_exif_rotation_is_applied_and_16bit_is_scaled(tmp_path):
    (tmp_path / "exif.jpg").write_bytes(_exif_rotated())
    assert check_image(str(tmp_path / "exif.jpg"))[0].size == (30, 40)  # 40x30 turned upright
    (tmp_path / "sixteen.png").write_bytes(_sixteen_bit())
    pixels = np.asarray(check_image(str(tmp_path / "sixteen.png"))[0])
    assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("content, reason", [
    (b"this is a text file, not a picture", "not a readable image"),
    (None, "not a readable image"),  # truncated JPEG
])
def test_broken_files_are_named_with_a_reason(tmp_path, content, reason):
    data = content if content is not None else _save(_rgb(size=(200, 200)), "JPEG")[:600]
    (tmp_path / "bad.jpg").write_bytes(data)
    with pytest.raises(ValueError, match=reason):
        check_image(str(tmp_path / "bad.jpg"))


def test_decompression_bomb_guard_is_reported_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x30 = 1200 pixels: over 2x the limit
    (tmp_path / "big.png").write_bytes(_save(_rgb(), "PNG"))
    with pytest.raises(ValueError, match="too large to decode safely"):
        check_image(str(tmp_path / "big.png"))


def test_converted_copies_leave_the_originals_alone(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "grey.png").write_bytes(_save(_rgb().convert("L"), "PNG"))
    (tmp_path / "in" / "ok.jpg").write_bytes(_save(_rgb(), "JPEG"))
    checked = check_images(str(tmp_path / "in"), ["grey.png", "ok.jpg"], str(tmp_path / "conv"))
    assert checked.paths == [str(tmp_path / "conv" / "grey.png.png"), str(tmp_path / "in" / "ok.jpg")]
    assert Image.open(tmp_path / "in" / "grey.png").mode == "L"
    assert len(checked.hashes) == len(checked.thumbs) == 2
    # the colour thumbnail is taken from the decoded, oriented RGB image: grey stays grey
    assert checked.thumbs[0].shape == (8, 8, 3) and (checked.thumbs[0] == checked.thumbs[0][..., :1]).all()


def _prepared(tmp_path, n_good, n_bad, **options):
    root = tmp_path / "images"
    root.mkdir()
    rows = []
    for i in range(n_good + n_bad):
        name = f"img{i}.jpg"
        (root / name).write_bytes(_save(_rgb(i), "JPEG") if i < n_good else b"broken")
        rows.append({"image_path": name, "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    files = sorted(os.listdir(root))
    return dataset_prep.prepare(str(tmp_path / "meta.csv"), str(root), files,
                                dataset_prep.DataOptions(**options), converted_dir=str(tmp_path / "conv"))


def test_a_few_unreadable_images_are_skipped_and_named(tmp_path):
    data = _prepared(tmp_path, n_good=40, n_bad=1)
    assert len(data.table) == 40
    assert any("1 unreadable image(s) skipped: img40.jpg: not a readable image" in w for w in data.warnings)


def test_too_many_unreadable_images_stop_the_run(tmp_path):
    with pytest.raises(InputError, match=r"3 of 23 images cannot be used \(more than 5%\): img20.jpg"):
        _prepared(tmp_path, n_good=20, n_bad=3)


def test_worker_processes_give_the_same_result_in_the_same_order(tmp_path, monkeypatch):
    from image_learner.data import image_check

    root = tmp_path / "in"
    root.mkdir()
    names = []
    for i in range(12):
        kind = ("ok", "grey", "broken")[i % 3]
        names.append(f"{i:02d}_{kind}.png")
        picture = _rgb(i).convert("L") if kind == "grey" else _rgb(i)
        data = b"not an image" if kind == "broken" else _save(picture, "PNG")
        (root / names[-1]).write_bytes(data)
    names.reverse()  # not the directory's order
    monkeypatch.setattr(image_check, "MIN_IMAGES_PER_POOL", 2)
    pooled = check_images(str(root), names, str(tmp_path / "conv2"), workers=2, resize_to=24)
    serial = check_images(str(root), names, str(tmp_path / "conv1"), resize_to=24)
    assert [p and os.path.basename(p) for p in pooled.paths] == [p and os.path.basename(p) for p in serial.paths]
    assert pooled.bad == serial.bad and len(pooled.bad) == 4
    assert pooled.converted == serial.converted and len(pooled.converted) == 4
    assert pooled.sizes == serial.sizes
    np.testing.assert_array_equal(np.stack(pooled.hashes), np.stack(serial.hashes))
    np.testing.assert_array_equal(np.stack(pooled.thumbs), np.stack(serial.thumbs))
    assert sorted(os.listdir(tmp_path / "conv2")) == sorted(os.listdir(tmp_path / "conv1"))


def test_resize_to_writes_model_sized_copies_and_keeps_full_size_facts(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "big.jpg").write_bytes(_save(_rgb(1, (60, 45)), "JPEG"))
    (root / "exact.png").write_bytes(_save(_rgb(2, (32, 32)), "PNG"))
    (root / "grey.png").write_bytes(_save(_rgb(3, (50, 50)).convert("L"), "PNG"))
    names = ["big.jpg", "exact.png", "grey.png"]
    full = check_images(str(root), names, str(tmp_path / "full"))
    small = check_images(str(root), names, str(tmp_path / "small"), resize_to=32)
    assert small.paths == [str(tmp_path / "small" / "big.jpg.png"), str(root / "exact.png"),
                           str(tmp_path / "small" / "grey.png.png")]
    for path in small.paths:
        with Image.open(path) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    assert small.sizes == full.sizes == [(60, 45), (32, 32), (50, 50)]
    np.testing.assert_array_equal(np.stack(small.hashes), np.stack(full.hashes))
    np.testing.assert_array_equal(np.stack(small.thumbs), np.stack(full.thumbs))
    assert small.converted == full.converted and list(small.converted) == ["grey.png"]  # resizing is no conversion
    with Image.open(root / "big.jpg") as original:
        expected = np.asarray(original.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    with Image.open(small.paths[0]) as copy:
        np.testing.assert_array_equal(np.asarray(copy), expected)  # lossless copy of the bilinear resize
