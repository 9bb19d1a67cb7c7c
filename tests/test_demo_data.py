"""The demo's bundled data (test-data/ham10000_lesions_*): the CSV matches the ZIP, lesions are whole and
carry one diagnosis, all 7 classes are there, and scripts/make_demo_data.py reproduces it. No training."""

import importlib.util
import io
import os
import re
import zipfile

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import ROOT, TEST_DATA

LESION_ZIP = os.path.join(TEST_DATA, "ham10000_lesions_images.zip")
LESION_CSV = os.path.join(TEST_DATA, "ham10000_lesions_metadata.csv")
SHARED_200X150 = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def load_script():
    """scripts/make_demo_data.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_demo_data", os.path.join(ROOT, "scripts", "make_demo_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesion_csv_matches_zip_and_images_decode():
    table = pd.read_csv(LESION_CSV)
    assert list(table.columns) == ["image_path", "dx", "lesion_id", "image_id", "age", "sex", "localization"]
    with zipfile.ZipFile(LESION_ZIP) as archive:
        members = [name for name in archive.namelist() if not name.endswith("/")]
        assert sorted(members) == sorted(table.image_path), "the ZIP holds exactly the CSV's images"
        assert table.image_path.is_unique and table.image_id.is_unique
        for name in members:
            with Image.open(io.BytesIO(archive.read(name))) as img:
                img.verify()
                assert img.size == (200, 150), name
    assert all(path == f"images/{image_id}.jpg" for path, image_id in zip(table.image_path, table.image_id))


def test_lesion_set_is_grouped_and_has_every_class():
    table = pd.read_csv(LESION_CSV)
    assert table.groupby("lesion_id").dx.nunique().max() == 1, "a lesion has one diagnosis"
    per_class = table.groupby("dx").lesion_id.nunique()
    assert sorted(per_class.index) == CLASSES
    assert per_class.min() >= 50 and per_class.max() <= 100
    assert 700 <= len(table) <= 1000
    # Several images of one lesion are there: the demo's --sample-id-column lesion_id has work to do.
    assert (table.groupby("lesion_id").size() > 1).sum() >= 100


@pytest.mark.skipif(not os.path.isdir(SHARED_200X150), reason="needs ../shared/data/ham10000/ham10000_200x150")
def test_make_demo_data_reproduces_the_lesion_set_with_whole_lesions():
    script = load_script()
    source = pd.read_csv(os.path.join(SHARED_200X150, "metadata.csv"))
    table = pd.read_csv(LESION_CSV)
    chosen = script.choose_lesions(source, per_class=100, seed=21)
    assert list(chosen.image_id) == list(table.image_id)
    # Every image of each chosen lesion, none of any other lesion.
    assert set(source.loc[source.lesion_id.isin(set(table.lesion_id)), "image_id"]) == set(table.image_id)
    assert list(script.choose_lesions(source, per_class=100, seed=22).image_id) != list(table.image_id)


def test_demo_script_uses_the_lesion_set():
    text = open(os.path.join(ROOT, "scripts", "run_demo.sh")).read()
    for name in re.findall(r"test-data/([\w.-]+\.(?:zip|csv))", text):
        assert os.path.isfile(os.path.join(TEST_DATA, name)), name
    assert "ham10000_lesions_images.zip" in text and "--sample-id-column lesion_id" in text
