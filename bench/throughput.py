#!/usr/bin/env python3
"""Training throughput: the tool's Ludwig training against a raw PyTorch loop on pre-decoded tensors.

Same model (random init: speed does not depend on the weights), image size, batch size, optimizer
(Adam), horizontal flips and torch thread count. The tool trains through ``ludwig_trainer.train`` with
the config ``ludwig_config`` builds, and a Ludwig callback times the training phase of each epoch
(first batch to the start of evaluation). The raw loop gets the same images already decoded and resized
to uint8 tensors, in PyTorch's default NCHW layout and in channels-last (which the tool uses).
Reported: the median images/s over the epochs after the first (which includes one-off warm-up); each
raw loop runs before and after the tool runs; the tool is compared with the faster raw layout.

Tool modes: ``original`` = Ludwig decodes and resizes the 600x450 JPEGs every epoch (lazy);
``resized`` = what the tool does since #7: its image check wrote model-sized PNG copies, Ludwig
decodes those (lazy); ``eager`` = Ludwig decodes everything once and keeps it in memory (float32;
grows with the data).

    python bench/throughput.py [--models caformer_s18 tf_efficientnet_lite0] [--sizes 96 224] \
        [--images 96] [--epochs 4] [--modes original resized eager]
"""

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SHARED  # noqa: E402
from plain_loop import decode_files  # noqa: E402
from image_learner.data import image_check  # noqa: E402
from image_learner.training import ludwig_config  # noqa: E402
from image_learner.training import ludwig_trainer  # noqa: E402
from ludwig.callbacks import Callback  # noqa: E402


class EpochTimer(Callback):
    """Seconds of each epoch's training phase (epoch start to the start of its evaluation) and the
    training batches it ran, so a rate is never computed over a partial epoch."""

    def __init__(self):
        self.started, self.seconds, self.batches, self.running = None, [], [], 0
        # CPU seconds of this process (all its threads) per epoch: steadier than wall time on a shared machine
        self.cpu_started, self.cpu_seconds = None, []

    def on_epoch_start(self, trainer, progress_tracker, save_path):
        self.started, self.running = time.perf_counter(), 0
        self.cpu_started = time.process_time()

    def on_batch_end(self, trainer, progress_tracker, save_path, sync_step=True):
        self.running += 1

    def on_eval_start(self, trainer, progress_tracker, save_path):
        if self.started is not None:
            self.seconds.append(time.perf_counter() - self.started)
            self.cpu_seconds.append(time.process_time() - self.cpu_started)
            self.batches.append(self.running)
            self.started = None


def raw_loop(model_name: str, x: torch.Tensor, n_classes: int, batch_size: int, epochs: int,
             channels_last: bool = False, device: str = "cpu", amp_dtype: str | None = None,
             cpu_seconds: list | None = None) -> list[float]:
    """Seconds per epoch. On a GPU the decoded images already sit in GPU memory (the ideal loop);
    ``amp_dtype`` ("bfloat16" or "float16", the latter with loss scaling) runs it in mixed precision.
    ``cpu_seconds``: if given, each epoch's CPU seconds of this process are appended to it."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=n_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    x = x.to(device)
    y = torch.randint(0, n_classes, (len(x),), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    device_type = torch.device(device).type
    if device_type == "cuda":  # as our trainer does (fast_trainer), so the ratio stays fair
        torch.backends.cudnn.benchmark = True
    scaler = torch.amp.GradScaler(device_type) if amp_dtype == "float16" else None
    seconds = []
    for _ in range(epochs):
        model.train()
        started, cpu_started = time.perf_counter(), time.process_time()
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            images = (x[rows].float() / 255.0 - mean) / std
            flip = torch.rand(len(rows), device=device) < 0.5
            images[flip] = images[flip].flip(-1)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type, dtype=getattr(torch, amp_dtype)) if amp_dtype else nullcontext():
                loss = F.cross_entropy(model(images), y[rows])
            optimizer.zero_grad()
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        if cpu_seconds is not None:
            cpu_seconds.append(time.process_time() - cpu_started)
    return seconds


def tool(model_name: str, table: pd.DataFrame, size: int, batch_size: int, epochs: int, mode: str,
         mixed_precision: str = "off") -> list[float]:
    """Seconds of each epoch's training phase through ``ludwig_trainer.train`` (``mixed_precision``
    "on" or "off", resolved as the command line would; the device is whatever Ludwig picks)."""
    options = ludwig_config.TrainingOptions(model_name=model_name, image_size=size, use_pretrained=False,
                                            epochs=epochs, early_stop=0, batch_size=batch_size,
                                            augmentation=["random_horizontal_flip"],
                                            preprocessing_mode="eager" if mode == "eager" else "lazy",
                                            mixed_precision=mixed_precision)
    config = ludwig_config.build_ludwig_config(options, "multiclass", train_rows=int((table.split == 0).sum()))
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as work:
        ludwig_trainer.train(table, config, work, os.path.join(work, "model"), 42, "multiclass", "balanced_accuracy",
                             callbacks=[timer])
    steps = -(-int((table.split == 0).sum()) // batch_size)
    if timer.batches != [steps] * epochs:
        raise RuntimeError(f"expected {epochs} epochs of {steps} batches, timed {timer.batches}")
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["caformer_s18", "tf_efficientnet_lite0"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--images", type=int, default=96, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=["original", "resized", "eager"], help="see above")
    args = parser.parse_args()
    labels = pd.read_csv(os.path.join(SHARED, "labels.csv"))
    paths = [os.path.abspath(os.path.join(SHARED, p)) for p in labels.image_path[:args.images + 16]]
    table = pd.DataFrame({"image_path": paths, "label": labels.dx[:len(paths)].tolist(),
                          "split": [0] * args.images + [1] * 8 + [2] * 8})
    n_classes = table.label.nunique()
    print(f"torch threads {torch.get_num_threads()}; {args.images} training images, batch {args.batch_size}")
    print("| model | size | raw NCHW img/s (before, after) | raw channels-last img/s (before, after) | "
          + " | ".join(f"tool ({m}) img/s | of best raw" for m in args.modes) + " |")
    print("|---|---|---|---|" + "---|---|" * len(args.modes))
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as scratch:
            checked = image_check.check_images("/", [p.lstrip("/") for p in table.image_path], scratch, workers=2,
                                               resize_to=size)
            resized = table.assign(image_path=checked.paths)
            x = decode_files(paths[:args.images], size)
            for model_name in args.models:
                def images_per_s(seconds: list[float]) -> float:
                    return args.images / float(np.median(seconds[1:] if len(seconds) > 1 else seconds))

                def raw(channels_last: bool) -> float:
                    return images_per_s(raw_loop(model_name, x, n_classes, args.batch_size, args.epochs, channels_last))

                before = raw(False), raw(True)
                cells = []
                for mode in args.modes:
                    rows = resized if mode == "resized" else table
                    cells.append(images_per_s(tool(model_name, rows, size, args.batch_size, args.epochs, mode)))
                after = raw(False), raw(True)
                nchw, last = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                best = max(nchw, last)
                print(f"| {model_name} | {size} | {nchw:.1f} ({before[0]:.1f}, {after[0]:.1f}) | "
                      f"{last:.1f} ({before[1]:.1f}, {after[1]:.1f}) | "
                      + " | ".join(f"{rate:.1f} | {rate / best:.0%}" for rate in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
