#!/usr/bin/env python3
"""Ablation of our trainer (image_learner/training/fast_trainer.py, issue 22): Ludwig's stock trainer, then
each change stacked (metrics every N batches, no loss scaler in bfloat16, pinned copies, cuDNN benchmark,
batches read ahead = our trainer), then the raw timm loop (bench/throughput.py's ``raw_loop``, images pre-decoded on the device,
NCHW and channels-last). Each variant runs in a fresh process; whole epochs are timed with a device sync
at the epoch's boundaries only (never per batch: that would hide the very waits measured). Prints images/s
(median of the epochs after the first), the ratio to the faster raw loop, peak memory (GPU: max allocated;
CPU: the process's peak RSS) and the last epoch's (default 3) validation metrics of stock vs ours.

    python bench/gpu_ablation.py [--smoke] [--model caformer_s18] [--size 384] [--images 512] [--epochs 3]
        [--precisions bfloat16 float32] [--variants stock metrics bf16_no_scaler pinned_copy cudnn_benchmark ours raw]
On the GPU machine: ``bash bench/gpu_check.sh ablation`` (header of that file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The stacked variants: each adds one change to the previous one ("ours" = all of them).
STACK = {"stock": (), "metrics": ("metrics",), "bf16_no_scaler": ("metrics", "bf16_no_scaler"),
         "pinned_copy": ("metrics", "bf16_no_scaler", "pinned_copy"),
         "cudnn_benchmark": ("metrics", "bf16_no_scaler", "pinned_copy", "cudnn_benchmark"),
         "ours": ("metrics", "bf16_no_scaler", "pinned_copy", "cudnn_benchmark", "batches_ahead")}
VARIANTS = (*STACK, "raw")
SMOKE = dict(model="test_efficientnet", size=32, images=48, batch=8, epochs=3, precisions=["float32"])
FULL = dict(model="caformer_s18", size=384, images=512, batch=32, epochs=3, precisions=["bfloat16", "float32"])


def peak_memory_gib() -> tuple[float, str]:
    """(peak GiB, what it is): the GPU's max allocated memory under CUDA, else this process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "GPU max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_tool(table: pd.DataFrame, a, changes: tuple[str, ...], callbacks: tuple = ()) -> dict:
    """One tool training through ludwig_trainer.train with the trainer ``changes`` (and Ludwig ``callbacks``
    of a caller's: bench/same_process_step.py); epoch seconds and the last epoch's validation metrics."""
    from throughput import EpochTimer

    from image_learner import run_files
    from image_learner.training import fast_trainer, ludwig_config, ludwig_trainer

    class SyncedEpochTimer(EpochTimer):  # a device sync at the epoch's boundaries only
        def on_epoch_start(self, trainer, progress_tracker, save_path):
            _sync()
            super().on_epoch_start(trainer, progress_tracker, save_path)

        def on_eval_start(self, trainer, progress_tracker, save_path):
            _sync()
            super().on_eval_start(trainer, progress_tracker, save_path)

    train_rows = int((table.split == 0).sum())
    options = ludwig_config.TrainingOptions(
        model_name=a.model, image_size=a.size, use_pretrained=False, epochs=a.epochs, early_stop=0,
        batch_size=a.batch, augmentation=["random_horizontal_flip"],
        mixed_precision="on" if a.precision != "float32" else "off")
    config = ludwig_config.build_ludwig_config(options, "multiclass", train_rows=train_rows)
    fast_trainer.select(changes)
    timer = SyncedEpochTimer()
    with tempfile.TemporaryDirectory() as work, run_files.scratch_tempdir(work) as scratch:
        trained = ludwig_trainer.train(table, config, scratch, os.path.join(work, "model"), 42, "multiclass",
                                       "balanced_accuracy", callbacks=[timer, *callbacks])
    steps = -(-train_rows // a.batch)
    if timer.batches != [steps] * a.epochs:
        raise RuntimeError(f"expected {a.epochs} epochs of {steps} batches, timed {timer.batches}")
    last = trained.history.iloc[-1]
    validation = {c: float(last[c]) for c in trained.history.columns if c.startswith("validation_")}
    return {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "epoch": int(last["epoch"]),
            "validation": validation,
            "best_epoch": trained.best_epoch, "device": trained.device}


def run_raw(table: pd.DataFrame, a) -> dict:
    """The raw loop on the same training images, pre-decoded, NCHW and channels-last (the faster counts)."""
    import torch
    from plain_loop import decode_files
    from throughput import raw_loop

    train = table[table.split == 0]
    x = decode_files(train.image_path.tolist(), a.size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    amp = None if a.precision == "float32" else a.precision
    layouts, cpu = {}, {}
    for layout in ("nchw", "channels_last"):
        cpu[layout] = []
        seconds = raw_loop(a.model, x, table.label.nunique(), a.batch, a.epochs, layout == "channels_last",
                           device=device, amp_dtype=amp, cpu_seconds=cpu[layout])
        layouts[layout] = seconds
    best = min(layouts, key=lambda k: float(np.median(layouts[k][1:] or layouts[k])))
    return {"seconds": layouts[best], "cpu_seconds": cpu[best], "layout": best, "layouts": layouts,
            "cpu_layouts": cpu}


def child(a) -> None:
    """One variant in this (fresh) process; prints one JSON line."""
    from image_learner import host_allocator

    # Every variant with the allocator the tool's command line sets (so the raw loop gets it too), unless
    # --glibc-defaults measures both without it.
    tuned = False if a.glibc_defaults else host_allocator.tune()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    table = pd.read_csv(a.table)
    result = run_raw(table, a) if a.variant == "raw" else run_tool(table, a, STACK[a.variant])
    n = int((table.split == 0).sum())
    seconds = result["seconds"]
    result["images_per_s"] = n / float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    result["images_per_s_per_epoch"] = [n / s for s in seconds]
    cpu = result["cpu_seconds"]  # images per CPU second: the rate on a shared machine, where wall time is noisy
    result["images_per_cpu_s"] = n / float(np.median(cpu[1:] if len(cpu) > 1 else cpu))
    result["peak_gib"], result["peak_kind"] = peak_memory_gib()
    result["allocator_tuned"] = tuned
    print("RESULT " + json.dumps(result), flush=True)


def prepare(a, folder: str) -> str:
    """The images once for every variant: the base set resized by the tool's image check (as a run leaves
    them); a CSV of image_path, label, split (``images`` training rows, 16 validation, 8 test)."""
    from gpu_check import build_set

    from image_learner.data import image_check

    _, _, base, labels, source = build_set(min(a.images + 24, 10**6), folder)
    n = a.images  # the base images repeated when fewer (the same copy read again: the timing is the same)
    rows = [k % len(base) for k in range(n + 24)]  # so validation/test may repeat training images: timing only
    used = sorted(set(rows))
    checked = image_check.check_images("/", [base[k].lstrip("/") for k in used], os.path.join(folder, "png"),
                                       workers=min(8, os.cpu_count() or 1), resize_to=a.size)
    copies = dict(zip(used, checked.paths))
    table = pd.DataFrame({"image_path": [copies[k] for k in rows], "label": [labels[k] for k in rows],
                          "split": [0] * n + [1] * 16 + [2] * 8})
    path = os.path.join(folder, "table.csv")
    table.to_csv(path, index=False)
    print(f"{n} training images (16 validation, 8 test) from {source}", flush=True)
    return path


def run_child(variant: str, table: str, a, precision: str) -> dict:
    """One variant in a fresh process of this script (``--child``); its RESULT line as a dict. RuntimeError
    with the child's exit code and the end of its stderr when it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--table", table,
           "--model", a.model, "--size", str(a.size), "--batch", str(a.batch),
           "--epochs", str(a.epochs), "--precision", precision, "--threads", str(a.threads or 0),
           *(["--glibc-defaults"] if getattr(a, "glibc_defaults", False) else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode or not line:
        raise RuntimeError(f"FAILED rc {run.returncode}\n{run.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def parent(a) -> dict:
    """Every precision x variant in its own process; the table of results."""
    started = time.time()
    results: dict = {"load_before": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        table = prepare(a, folder)
        for precision in a.precisions:
            for variant in a.variants:
                try:
                    res = run_child(variant, table, a, precision)
                except RuntimeError as failure:
                    print(f"{precision} {variant}: {failure}", flush=True)
                    continue
                results["runs"][f"{precision} {variant}"] = res
                print(f"[{time.time() - started:6.0f} s] {precision} {variant}: {res['images_per_s']:.1f} img/s, "
                      f"peak {res['peak_gib']:.2f} GiB ({res['peak_kind']})", flush=True)
                if a.json:  # after every variant: a run stopped at its time limit keeps what it measured
                    with open(a.json, "w") as handle:
                        json.dump(results, handle, indent=1)
    results["load_after"] = os.getloadavg()
    return results


def print_table(res: dict, a) -> None:
    runs = res["runs"]
    print(f"\n## Trainer ablation: {a.model} {a.size} px, batch {a.batch}, {a.epochs} epochs, images/s = median "
          f"of epochs 2-{a.epochs}; load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}\n")
    print("| precision | variant | img/s | per epoch | ÷ raw | img per CPU s | ÷ raw (CPU) | peak GiB |\n"
          "|---|---|---|---|---|---|---|---|")
    for precision in a.precisions:
        raw = runs.get(f"{precision} raw", {}).get("images_per_s")
        raw_cpu = runs.get(f"{precision} raw", {}).get("images_per_cpu_s")
        for variant in a.variants:
            r = runs.get(f"{precision} {variant}")
            if not r:
                print(f"| {precision} | {variant} | failed | | | | | |")
                continue
            ratio = f"{r['images_per_s'] / raw:.2f}" if raw else "n/a"
            name = f"raw ({r['layout']})" if variant == "raw" else variant
            per_epoch = ", ".join(f"{x:.1f}" for x in r["images_per_s_per_epoch"])
            cpu_ratio = f"{r['images_per_cpu_s'] / raw_cpu:.2f}" if raw_cpu else "n/a"
            print(f"| {precision} | {name} | {r['images_per_s']:.1f} | {per_epoch} | {ratio} | "
                  f"{r['images_per_cpu_s']:.2f} | {cpu_ratio} | {r['peak_gib']:.2f} |")
        stock, ours = runs.get(f"{precision} stock"), runs.get(f"{precision} ours")
        if stock and ours:
            print(f"\n{precision}, epoch {stock['epoch']} validation (kept epoch stock {stock['best_epoch']}, "
                  f"ours {ours['best_epoch']}):\n\n| metric | stock | ours |\n|---|---|---|")
            for name in stock["validation"]:
                print(f"| {name} | {stock['validation'][name]:.6f} | {ours['validation'].get(name, float('nan')):.6f} |")
            print()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="tiny model and images, to prove the script on a CPU")
    p.add_argument("--model")
    p.add_argument("--size", type=int)
    p.add_argument("--images", type=int, help="training images per epoch")
    p.add_argument("--batch", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--precisions", nargs="+", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads in every variant (0: torch's default)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--glibc-defaults", action="store_true",
                   help="every variant with glibc's default allocator (not the tool's host_allocator settings)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    a = p.parse_args()
    defaults = SMOKE if a.smoke else FULL
    for key in ("model", "size", "images", "batch", "epochs", "precisions"):
        if getattr(a, key) is None:
            setattr(a, key, defaults[key])
    if a.child:
        a.variant = a.child
        child(a)
        return
    res = parent(a)
    print_table(res, a)
    if a.json:
        with open(a.json, "w") as handle:
            json.dump(res, handle, indent=1)
    if len(res["runs"]) < len(a.precisions) * len(a.variants):
        sys.exit(1)


if __name__ == "__main__":
    main()
