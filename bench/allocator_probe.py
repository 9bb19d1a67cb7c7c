#!/usr/bin/env python3
"""The host allocator's effect on CPU training (BENCHMARKS.md, "Host allocator"): one process, one variant.

Trains the tool's trainer (Ludwig's, with every change of fast_trainer: gpu_ablation's ``ours``) or the raw
timm loop on the same resized images, with glibc's allocator as the tool sets it (host_allocator.SETTINGS),
as glibc has it (``--glibc-defaults``) or with other ``mallopt`` values (``--mallopt MMAP,TRIM,PAD`` in bytes,
empty = glibc's), and prints each epoch's seconds (training phase only) and this process's minor page faults,
system CPU seconds and peak RSS. Compare variants by running the script once per setting, each in a fresh
process (the settings hold for a process's life):

    OMP_NUM_THREADS=2 python bench/allocator_probe.py --variant tool [--model tf_efficientnet_lite0] [--images 256]
        [--epochs 3] [--glibc-defaults | --mallopt 33554432,1073741824,268435456]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_learner import host_allocator  # noqa: E402


def set_allocator(a) -> str:
    """Apply the chosen settings before anything large is allocated; returns what was applied."""
    if a.glibc_defaults:
        return "glibc defaults"
    if a.mallopt is None:
        return "tool (host_allocator.SETTINGS)" if host_allocator.tune() else "unchanged (not glibc, or MALLOC_ set)"
    parameters = (host_allocator.M_MMAP_THRESHOLD, host_allocator.M_TRIM_THRESHOLD, host_allocator.M_TOP_PAD)
    settings = [(parameter, int(value)) for parameter, value in zip(parameters, a.mallopt.split(",")) if value]
    if not host_allocator.apply(settings):
        raise SystemExit(f"mallopt refused one of {settings}")
    return f"mallopt mmap,trim,pad = {a.mallopt}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=("tool", "raw"), required=True)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--glibc-defaults", action="store_true")
    group.add_argument("--mallopt", help="MMAP,TRIM,PAD bytes (empty field: glibc's)")
    a = p.parse_args()
    applied = set_allocator(a)

    import pandas as pd
    import torch

    from gpu_ablation import STACK, prepare, run_raw, run_tool

    torch.set_num_threads(a.threads)
    a.precision = "float32"
    with tempfile.TemporaryDirectory() as folder:
        table = pd.read_csv(prepare(a, folder))
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.time()
        result = run_raw(table, a) if a.variant == "raw" else run_tool(table, a, STACK["ours"])
        after = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({
        "variant": a.variant, "model": a.model, "allocator": applied, "epoch_s": result["seconds"],
        "epoch_cpu_s": result["cpu_seconds"], "wall_s": round(time.time() - started, 1),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "system_cpu_s": round(after.ru_stime - before.ru_stime, 1), "peak_rss_gib": round(after.ru_maxrss / 2**20, 2),
        "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
