#!/usr/bin/env python3
"""Which default image size? Accuracy and time of tf_efficientnet_lite0 (offline ImageNet weights,
fine-tuned) on the 258 shared HAM10000 originals (600x450, split by lesion) at several input sizes.

    python bench/image_size.py [--sizes 96 160 224] [--seeds 42 43] [--epochs 10]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_set, lite0_weights, run_tool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160, 224])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default="/tmp/size_bench")
    args = parser.parse_args()
    csv, zip_path = build_set(os.path.join(args.work, "data"), side=None, flips=False)
    weights = lite0_weights()
    print("| image size | seeds | test accuracy | test balanced acc. | test ROC-AUC | training s | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        rows = []
        for seed in args.seeds:
            out = os.path.join(args.work, f"size_{size}_{seed}")
            summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                               weights, "--image-size", str(size), "--epochs", str(args.epochs), "--early-stop",
                               "0", "--random-seed", str(seed), "--sample-id-column", "lesion_id")
            train_s = next(v for k, v in summary["timings_s"].items() if k.startswith("training"))
            rows.append((summary["metrics"]["test"], train_s, summary["training"]["epochs_run"]))
        acc = np.array([r[0]["accuracy"] for r in rows])
        bal = np.array([r[0]["balanced_accuracy"] for r in rows])
        auc = np.array([r[0]["roc_auc"] for r in rows])
        secs = np.mean([r[1] for r in rows])
        print(f"| {size} | {len(rows)} | {acc.mean():.3f} ± {acc.std():.3f} | {bal.mean():.3f} ± {bal.std():.3f} | "
              f"{auc.mean():.3f} ± {auc.std():.3f} | {secs:.0f} | {secs / rows[0][2]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
