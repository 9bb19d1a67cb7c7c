#!/usr/bin/env python3
"""Accuracy of the tool against a plain PyTorch + timm loop (bench/plain_loop.py) on the same split.

Tutorial-style set (258 shared HAM10000 originals at 96 px + a flipped copy of each), split by lesion
with the leakage guard, tf_efficientnet_lite0 with offline ImageNet weights (or random init), same
epochs, batch size, learning rate (constant, or warm-up + cosine), flips, image size and epoch selection
(best validation balanced accuracy). The loop trains on the tool run's split.csv.

    python bench/tool_vs_loop.py [--seeds 42 43 44] [--epochs 10] [--work /tmp/tool_vs_loop]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, build_set, lite0_weights, run_tool  # noqa: E402

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default="/tmp/tool_vs_loop")
    parser.add_argument("--runs", nargs="+", default=["pretrained:constant", "pretrained:cosine", "random:constant"],
                        help="weights:schedule pairs")
    args = parser.parse_args()
    csv, zip_path = build_set(os.path.join(args.work, "data"), side=96, flips=True)
    weights = lite0_weights()
    results = {}
    for run in args.runs:
        init, schedule = run.split(":")
        for seed in args.seeds:
            out = os.path.join(args.work, f"tool_{init}_{schedule}_{seed}")
            weight_args = ["--pretrained-weights", weights] if init == "pretrained" else ["--no-use-pretrained"]
            summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", *weight_args,
                               "--image-size", "96", "--epochs", str(args.epochs), "--early-stop", "0",
                               "--batch-size", "32", "--learning-rate", "0.001", "--random-seed", str(seed),
                               "--sample-id-column", "lesion_id", "--lr-schedule", schedule)
            results.setdefault(("tool", init, schedule), []).append(summary["metrics"]["test"])
            loop = subprocess.run(
                [sys.executable, os.path.join(ROOT, "bench", "plain_loop.py"), "--run-dir", out, "--image-zip",
                 zip_path, "--size", "96", "--epochs", str(args.epochs), "--batch-size", "32", "--lr", "0.001",
                 "--seed", str(seed), "--lr-schedule", schedule,
                 *(["--weights", weights] if init == "pretrained" else [])],
                capture_output=True, text=True, check=True)
            results.setdefault(("loop", init, schedule), []).append(json.loads(loop.stdout.strip().splitlines()[-1]))
            print(f"{init} {schedule} seed {seed}: tool {json.dumps(summary['metrics']['test'])[:300]} "
                  f"(kept epoch {summary['training']['best_epoch']})\n  loop {loop.stdout.strip()[:300]}", flush=True)
    print("\n| trainer | weights | schedule | " + " | ".join(f"test {m}" for m in METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for (trainer, init, schedule), runs in sorted(results.items(), key=lambda item: (item[0][1], item[0][2])):
        cells = []
        for m in METRICS:
            values = np.array([r[m] if m in r else r.get("roc_auc") for r in runs], dtype=float)
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
        print(f"| {trainer} | {init} | {schedule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
