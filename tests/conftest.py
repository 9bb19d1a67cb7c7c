"""Shared fixtures: paths to the bundled real test data, and tiny synthetic image sets."""

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(ROOT, "test-data")
DEMO_ZIP = os.path.join(TEST_DATA, "ham10000_demo_images.zip")
DEMO_CSV = os.path.join(TEST_DATA, "ham10000_demo_metadata.csv")


def make_zip(path, members: dict) -> str:
    """Write a ZIP whose members are {name: bytes}."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def png_bytes(seed: int, size: int = 32) -> bytes:
    """A random-texture RGB PNG: distinct seeds give images the leakage guard tells apart."""
    import io

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size // 4, size // 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def demo_paths():
    return {"zip": DEMO_ZIP, "csv": DEMO_CSV, "dir": TEST_DATA}


# Hypothesis keeps its example database in memory: the tests write nothing into the checkout.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("no_files", database=None)
    _hypothesis_settings.load_profile("no_files")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_temporary_dirs():
    """After the whole session, the checkout and the system temp dir hold no new entries except
    pytest's own: no test leaves files outside its temporary directory."""
    import tempfile

    temp_root = tempfile.gettempdir()
    before = {ROOT: set(os.listdir(ROOT)), temp_root: set(os.listdir(temp_root))}
    yield
    allowed = {".pytest_cache", "__pycache__"}
    for folder, entries in before.items():
        new = {e for e in set(os.listdir(folder)) - entries - allowed if not e.startswith("pytest-of-")}
        assert not new, f"tests left {sorted(new)} in {folder}"
