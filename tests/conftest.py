"""Shared fixtures: paths to the bundled real test data, and tiny synthetic image sets."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(ROOT, "test-data")
DEMO_ZIP = os.path.join(TEST_DATA, "ham10000_demo_images.zip")
DEMO_CSV = os.path.join(TEST_DATA, "ham10000_demo_metadata.csv")
CLI = os.path.join(ROOT, "image_learner_cli.py")


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
def start_cli(tmp_path):
    """Starts the CLI in its own process (stdout and stderr merged into a queue of lines, temporary files
    in ``tmp_path/tmp``); one still running at the end of the test is killed."""
    started = []

    def start(args):
        (tmp_path / "tmp").mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, CLI, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        started.append(process)
        process.lines = queue.Queue()
        process.reader = threading.Thread(target=lambda: [process.lines.put(line) for line in process.stdout],
                                          daemon=True)
        process.reader.start()
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_line(process, text, seconds=300):
    """Read the output line by line until one holds ``text``; fail after ``seconds``."""
    seen, deadline = [], time.time() + seconds
    while time.time() < deadline:
        try:
            line = process.lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, "the CLI ended early:\n" + "".join(seen[-40:])
            continue
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"no line with {text!r} within {seconds} s:\n" + "".join(seen[-40:]))


def stop_and_check(process, signum, out, tmp_path):
    """Send ``signum``; the CLI exits 128 + signum, saying so, and leaves no outputs, no scratch folder,
    no temporary file and no child process."""
    import psutil

    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signum)
    code = process.wait(timeout=120)
    process.reader.join(30)
    output = "".join(process.lines.queue)
    assert code == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output
    assert "Traceback" not in output, output[-3000:]
    assert os.listdir(out) == []  # no outputs, no .work-* scratch folder
    assert os.listdir(tmp_path / "tmp") == []
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


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
def nothing_written_outside_temporary_dirs(tmp_path_factory):
    """After the whole session, the checkout and the system temp dir hold no new entries except
    pytest's own: no test leaves files outside its temporary directory."""
    import tempfile

    # torch._dynamo makes its cache folder in the temp dir when tests import timm or Ludwig outside a
    # run (runs point it at their scratch folder): a library's cache, sent to pytest's temp dir.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("torchinductor")))
    temp_root = tempfile.gettempdir()
    before = {ROOT: set(os.listdir(ROOT)), temp_root: set(os.listdir(temp_root))}
    yield
    allowed = {".pytest_cache", "__pycache__"}
    for folder, entries in before.items():
        new = {e for e in set(os.listdir(folder)) - entries - allowed if not e.startswith("pytest-of-")}
        assert not new, f"tests left {sorted(new)} in {folder}"
