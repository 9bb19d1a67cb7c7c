#!/usr/bin/env python3
"""The leak as a number: a tutorial-style set (the 258 shared HAM10000 originals at 96 px plus a flipped
copy of each) trained with the leakage guard on and off, same seeds, same model (tf_efficientnet_lite0,
offline ImageNet weights). With the guard off, the random split puts flip pairs on both sides.

    python bench/leakage_effect.py [--seeds 42 43 44] [--epochs 10] [--work /tmp/leak_bench]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_set, lite0_weights, run_tool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default="/tmp/leak_bench")
    args = parser.parse_args()
    csv, zip_path = build_set(os.path.join(args.work, "data"), side=96, flips=True)
    weights = lite0_weights()
    results = {"on": [], "off": []}
    print("| guard | seed | flip pairs grouped | groups straddling splits | test accuracy | test balanced acc. | "
          "test ROC-AUC | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for guard in ("on", "off"):
            out = os.path.join(args.work, f"guard_{guard}_{seed}")
            summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                               weights, "--image-size", "96", "--epochs", str(args.epochs), "--early-stop", "0",
                               "--random-seed", str(seed), f"--{'' if guard == 'on' else 'no-'}leakage-guard")
            test = summary["metrics"]["test"]
            results[guard].append(test)
            print(f"| {guard} | {seed} | {summary['leakage']['duplicate_groups']} | "
                  f"{summary['leakage']['straddling_groups']} | {test['accuracy']:.3f} | "
                  f"{test['balanced_accuracy']:.3f} | {test['roc_auc']:.3f} | {summary['wall_s']:.0f} |", flush=True)
    for guard, tests in results.items():
        acc = np.array([t["accuracy"] for t in tests])
        print(f"guard {guard}: test accuracy {acc.mean():.3f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.3f} "
              f"over {len(acc)} seeds")


if __name__ == "__main__":
    main()
