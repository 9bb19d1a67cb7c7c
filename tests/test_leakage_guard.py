"""Leakage guard on real HAM10000 images: copies up to flips/rotations are grouped, distinct lesions are not,
and a picture and its copy always land in the same split."""

import io
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import dataset_prep
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA
from input_utils import extract_zip_safely
from leakage_guard import duplicate_groups, image_hashes, min_distances


@pytest.fixture(scope="module")
def originals():
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith("_orig.jpg"))
        return [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in names]


def _recompressed(img, fmt="JPEG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


COPIES = {
    "horizontal flip": ImageOps.mirror,
    "vertical flip": ImageOps.flip,
    "rotation 90": lambda im: im.rotate(90),
    "rotation 270 + flip": lambda im: ImageOps.mirror(im.rotate(270)),
    "upscaled + JPEG": lambda im: _recompressed(im.resize((150, 150), Image.Resampling.BICUBIC)),
    "downscaled + flip + PNG": lambda im: _recompressed(ImageOps.mirror(im.resize((40, 40))), "PNG"),
}


@pytest.mark.parametrize("kind", COPIES)
def test_copies_join_their_original_and_nothing_else(originals, kind):
    copies = [COPIES[kind](img) for img in originals[:20]]
    hashes = np.array([image_hashes(img) for img in originals[:20] + copies])
    groups = duplicate_groups(hashes)
    n = 20
    assert all(groups[i] == groups[n + i] for i in range(n)), kind
    assert len(set(groups[:n])) == n  # distinct lesions stay distinct


def test_distinct_real_lesions_are_far_apart(originals):
    dist = min_distances(np.array([image_hashes(img) for img in originals])).astype(int)
    np.fill_diagonal(dist, 10_000)
    assert dist.min() > 20


def _prepare(tmp_path, guard: bool, csv=DEMO_CSV, **options):
    images = str(tmp_path / "images")
    files = extract_zip_safely(DEMO_ZIP, images)
    return dataset_prep.prepare(csv, images, files, dataset_prep.DataOptions(leakage_guard=guard, **options))


def test_flip_pairs_always_share_a_split_with_the_guard(tmp_path):
    for seed in (1, 2, 3):
        data = _prepare(tmp_path / str(seed), guard=True, random_seed=seed)
        assert data.leakage["duplicate_groups"] == 70
        pairs = data.table.assign(pic=data.table["image"].str.replace(r"_(orig|flip)\.jpg$", "", regex=True))
        assert pairs.groupby("pic")["split"].nunique().max() == 1
        assert data.leakage["straddling_groups"] == 0


def test_without_the_guard_the_leak_is_reported_loudly(tmp_path):
    data = _prepare(tmp_path, guard=False)
    assert data.leakage["duplicate_groups"] == 70  # still found, only not used for the split
    assert data.leakage["straddling_groups"] > 0
    assert any(w.startswith("LEAKAGE") for w in data.warnings)


def test_user_split_column_that_leaks_is_kept_but_reported(tmp_path):
    table = pd.read_csv(DEMO_CSV)
    table["split"] = np.where(table["image_path"].str.endswith("_flip.jpg"), "test", "train")
    csv = tmp_path / "leaky.csv"
    table.to_csv(csv, index=False)
    data = _prepare(tmp_path, guard=True, csv=str(csv))
    assert (data.table["split"] == 2).sum() == 70  # the user's test rows are kept as given
    assert data.leakage["straddling_groups"] == 70
    assert any("LEAKAGE" in w for w in data.warnings)
    assert "validation carved out" in data.split["method"]


def test_sample_id_groups_hold_when_validation_is_carved(tmp_path):
    data = _prepare(tmp_path, guard=False, sample_id_column="lesion_id",
                    csv=os.path.join(TEST_DATA, "ham10000_demo_split_column.csv"))
    assert set(data.table["split"]) == {0, 1, 2}
    assert data.table.groupby("sample_id")["split"].nunique().max() == 1
