"""One run's files in its output directory, shared by training (pipeline.py) and prediction (predictor.py):
the output directory check, the scratch folder, removal of outputs after a failure, run_summary.json,
and the progress log with stage timings. It imports only errors.py and console.py of the tool.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from image_learner.console import log
from image_learner.errors import InputError

TOOL_VERSION = "0.1.0"
SUMMARY_FILE = "run_summary.json"
# Ludwig's and the libraries' output (console.library_output_to), of training and of predict
TRAINING_LOG, PREDICTION_LOG = "training_log.txt", "prediction_log.txt"
OUTPUT_FILES = ("predictions.csv", "training_history.csv", "metrics.json", "config.yaml", "split.csv",
                "data_health.csv", SUMMARY_FILE, "trained_model.zip", "report.html", TRAINING_LOG, PREDICTION_LOG)
OUTPUT_DIRS = ("model",)
# The scratch folder is <output dir>/.work-<random>: a name nobody can guess and plant a link at beforehand.
SCRATCH_PREFIX = ".work-"


def log_skipped_members(unpacked) -> None:
    """Files of the images ZIP that are not images are left in the archive: say how many."""
    if unpacked.skipped:
        examples = ", ".join(unpacked.skipped[:3]) + (" …" if len(unpacked.skipped) > 3 else "")
        log(f"{len(unpacked.skipped)} file(s) in the image ZIP are not images and were skipped ({examples})")


class StageTimer:
    """Logs '<stage> …' and '<stage> done in N s'; keeps the seconds per stage for run_summary.json.
    ``after_stage``: called when a stage has finished (the pipeline hands freed memory back there)."""

    def __init__(self, after_stage=None):
        self.seconds: dict[str, float] = {}
        self.after_stage = after_stage

    @contextmanager
    def stage(self, name: str):
        log(f"{name} …")
        started = time.time()
        yield
        self.seconds[name] = round(time.time() - started, 2)
        log(f"{name} done in {self.seconds[name]:.1f} s")
        if self.after_stage:
            self.after_stage()


def scratch_leftovers(out: str) -> list[str]:
    """Scratch folders that runs killed outright (SIGKILL, power loss) left in ``out``; ``.work`` was the
    fixed name of older versions."""
    return [name for name in (os.listdir(out) if os.path.isdir(out) else [])
            if (name == ".work" or name.startswith(SCRATCH_PREFIX)) and os.path.isdir(os.path.join(out, name))
            and not os.path.islink(os.path.join(out, name))]


@contextmanager
def scratch_tempdir(out: str):
    """Create a scratch folder with an unguessable name in ``out`` and point every library's temporary
    files (tempfile, $TMPDIR: Ludwig's locks, torch's caches) at it while the block runs, then delete it,
    on success and on failure: nothing is left outside the output directory."""
    work = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out)
    previous_tempdir, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = work
    try:
        yield work
    finally:
        tempfile.tempdir = previous_tempdir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env
        try:
            shutil.rmtree(work, ignore_errors=True)
        except BaseException:  # a stop signal in the middle: finish removing (later ones are ignored)
            shutil.rmtree(work, ignore_errors=True)
            raise


def prepare_output_dir(path: str, overwrite: bool) -> None:
    """An empty or new directory; a previous run's outputs (or the scratch folder an interrupted run left
    behind) are replaced only with ``overwrite``."""
    entries = os.listdir(path) if os.path.isdir(path) else []
    if entries:
        previous_run = os.path.isfile(os.path.join(path, SUMMARY_FILE))
        leftovers = scratch_leftovers(path)
        interrupted_run = len(leftovers) == len(entries)
        ours = previous_run or interrupted_run
        if not overwrite:
            raise InputError(f"output directory {path!r} is not empty"
                             + ("; it holds a previous run: pass --overwrite to replace it" if previous_run else "")
                             + ("; it holds the scratch folder of an interrupted run: pass --overwrite to remove it"
                                if interrupted_run else ""))
        if not ours:
            raise InputError(f"output directory {path!r} is not empty and holds no previous run; "
                             "refusing to delete files there")
        remove_outputs(path)
        for name in leftovers:
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def remove_outputs(out: str) -> None:
    """After a failure: remove what this run wrote (the directory was empty or ours before)."""
    for name in OUTPUT_FILES + OUTPUT_DIRS:
        target = os.path.join(out, name)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.exists(target):
            os.remove(target)


def write_json(path: str, payload: dict) -> None:
    """metrics.json, run_summary.json: strict JSON (jq, JSON.parse and Galaxy's sniffers refuse a bare
    NaN or Infinity), so a value that is not a finite number is written as null."""
    with open(path, "w") as handle:
        json.dump(finite_or_null(payload), handle, indent=2, allow_nan=False)


def finite_or_null(value):
    """``value`` with numpy scalars made Python ones and every NaN / infinity replaced by None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("ludwig", "torch", "timm", "scikit-learn", "pandas", "numpy", "Pillow", "plotly", "cleanlab"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
