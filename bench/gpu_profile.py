#!/usr/bin/env python3
"""Where the tool's GPU training step loses time against the raw loop (bench/gpu_check.py measured the
tool at 0.50 of the raw loop's images/s with mixed precision on an H200). One device-tool call:

- the median time of one training batch (Ludwig's ``on_batch_start`` to ``on_batch_end``: fetching the
  batch, forward, backward, optimizer step, bookkeeping; a CUDA synchronise at both ends) for: lazy
  decoding with flips (what the tool runs), lazy without augmentation, eager (pre-decoded) without
  augmentation;
- a cProfile of the first variant's second epoch (main thread): where the Python time goes (waiting
  for the next batch, the step, metric updates, synchronisations).

    python bench/gpu_profile.py [--smoke]    (on the device: bash bench/gpu_check.sh profile)
"""

import argparse
import cProfile
import io
import pstats
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_check import FULL, SMOKE, build_set  # noqa: E402
from image_learner.training import devices  # noqa: E402
from image_learner.data import image_check  # noqa: E402
from image_learner.training import ludwig_config  # noqa: E402
from image_learner.training import ludwig_trainer  # noqa: E402
from ludwig.callbacks import Callback  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Seconds of each training batch (Ludwig's on_batch_start to on_batch_end: fetching the batch, the
    step, the bookkeeping) in epochs after the first; optionally a cProfile of the second epoch."""

    def __init__(self, profile: bool = False):
        self.epoch, self.started, self.seconds = 0, None, []
        self.profile = cProfile.Profile() if profile else None

    def on_epoch_start(self, trainer, progress_tracker, save_path):
        self.epoch += 1
        if self.profile is not None and self.epoch == 2:
            self.profile.enable()

    def on_epoch_end(self, trainer, progress_tracker, save_path):
        if self.profile is not None and self.epoch == 2:
            self.profile.disable()

    def on_batch_start(self, trainer, progress_tracker, save_path):
        _sync()
        self.started = time.perf_counter()

    def on_batch_end(self, trainer, progress_tracker, save_path, sync_step=True):
        _sync()
        if self.epoch > 1:
            self.seconds.append(time.perf_counter() - self.started)


def run_variant(table: pd.DataFrame, s: dict, mode: str, augmentation: list[str], profile: bool) -> dict:
    amp = "on" if torch.cuda.is_available() else "off"
    options = ludwig_config.TrainingOptions(model_name=s["model"], image_size=s["size"], use_pretrained=False,
                                            epochs=3, early_stop=0, batch_size=s["batch"], augmentation=augmentation,
                                            preprocessing_mode=mode, mixed_precision=amp)
    config = ludwig_config.build_ludwig_config(options, "multiclass", train_rows=int((table.split == 0).sum()))
    timer = StepTimer(profile)
    with tempfile.TemporaryDirectory() as work:
        ludwig_trainer.train(table, config, work, os.path.join(work, "model"), 42, "multiclass", "balanced_accuracy",
                             callbacks=[timer])
    batch = float(np.median(timer.seconds))
    return {"batch_ms": 1000 * batch, "images_per_s": s["batch"] / batch, "profile": timer.profile}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    started = time.time()
    print(f"{devices.describe()}; {s['model']} {s['size']} px batch {s['batch']}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        _, _, base, labels, source = build_set(min(s["rows"], 60), work)
        n = min(s["raw_images"], len(base) - 16)
        checked = image_check.check_images("/", [p.lstrip("/") for p in base[:n + 16]], os.path.join(work, "png"),
                                           workers=min(8, os.cpu_count() or 1), resize_to=s["size"])
        table = pd.DataFrame({"image_path": checked.paths, "label": labels[:n + 16],
                              "split": [0] * n + [1] * 8 + [2] * 8})
        rows, profile = [], None
        for name, mode, aug, prof in (("lazy, flips (the tool)", "lazy", ["random_horizontal_flip"], True),
                                      ("lazy, no augmentation", "lazy", [], False),
                                      ("eager, no augmentation", "eager", [], False)):
            res = run_variant(table, s, mode, aug, prof)
            profile = profile or res.pop("profile")
            res.pop("profile", None)
            rows.append((name, res))
            print(f"[{time.time() - started:6.1f} s] {name}: {res}", flush=True)
    print(f"\n## Tool training step on {devices.describe()}: {s['model']}, {s['size']} px, batch {s['batch']}, "
          f"{n} training images, median over epochs 2-3\n")
    print("| variant | one batch (ms) | images/s |\n|---|---|---|")
    for name, res in rows:
        print(f"| {name} | {res['batch_ms']:.1f} | {res['images_per_s']:.1f} |")
    if profile is not None:
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text).sort_stats("cumulative")
        stats.print_stats(35)
        print("\n### cProfile of epoch 2 of the first variant (main thread), by cumulative time\n")
        print(text.getvalue()[-9000:])
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
