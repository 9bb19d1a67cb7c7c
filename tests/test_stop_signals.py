"""A run stopped by SIGTERM (Galaxy's cancel or walltime) or SIGINT leaves nothing behind: no outputs,
no scratch folder, no worker process; the exit code says which signal (143 / 130)."""

import io
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_CSV, DEMO_ZIP, stop_and_check, wait_for_line
from image_learner.data.image_check import check_images


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_training_leaves_nothing(tmp_path, start_cli, signum):
    """SIGINT too: Ludwig's own Ctrl-C handler would end training early and save the model as finished."""
    out = tmp_path / "out"
    process = start_cli(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                         "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32",
                         "--epochs", "50", "--batch-size", "16", "--no-report"])
    wait_for_line(process, "[image-learner] training test_efficientnet")
    wait_for_line(process, "[image-learner] epoch 1/50:")  # Ludwig's training loop is under way
    assert any(name.startswith(".work-") for name in os.listdir(out))
    stop_and_check(process, signum, out, tmp_path)


def test_a_stopped_image_check_ends_its_worker_processes_at_once(tmp_path):
    """The check of many images runs on a process pool that hands out chunks of 1/32 of the images;
    stopped, it must not first finish the chunks under way and queued (Slurm kills after 30 s), and no
    worker may outlive it."""
    root, converted = tmp_path / "images", tmp_path / "converted"
    root.mkdir()
    names = [f"{i}.png" for i in range(1200)]
    chunk = len(names) // 32
    ramp = np.linspace(0, 255, 384, dtype=np.uint8)  # a smooth 384 px picture: a small file, ~30 ms to check
    picture = io.BytesIO()
    Image.fromarray(np.stack([np.tile(ramp, (384, 1)), np.tile(ramp[:, None], (1, 384)),
                              np.full((384, 384), 128, np.uint8)], axis=-1)).save(picture, format="PNG")
    for name in names:
        (root / name).write_bytes(picture.getvalue())

    class Stop(BaseException):
        pass

    def raise_stop(signum, frame):
        raise Stop

    def written():
        return sum(len(files) for _, _, files in os.walk(converted))

    at_stop = []

    def stop_once_started():
        deadline = time.time() + 120
        while written() < 20 and time.time() < deadline:
            time.sleep(0.02)
        at_stop.append(written())
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_stop)
    try:
        threading.Thread(target=stop_once_started, daemon=True).start()
        with pytest.raises(Stop):
            check_images(str(root), names, str(converted), workers=2, resize_to=32)  # one resized copy each
        assert written() - at_stop[0] < chunk, (at_stop, written())
        assert multiprocessing.active_children() == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
