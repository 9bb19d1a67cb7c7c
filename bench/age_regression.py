#!/usr/bin/env python3
"""Regression on real data: the patient's age from the dermoscopy image, on the 258 shared HAM10000
originals (split by lesion, stratified by age quantiles), tf_efficientnet_lite0 with offline ImageNet
weights. Compared with the baseline that predicts the training rows' mean age for every image.

    python bench/age_regression.py [--seeds 42 43] [--epochs 10] [--image-size 96]
"""

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SHARED, build_set, lite0_weights, run_tool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--work", default="/tmp/age_bench")
    args = parser.parse_args()
    csv, zip_path = build_set(os.path.join(args.work, "data"), side=None, flips=False)
    ages = pd.read_csv(os.path.join(SHARED, "labels.csv")).set_index("image_id")["age"]
    table = pd.read_csv(csv)
    table["age"] = [ages[name.rsplit("_", 1)[0]] for name in table["image_path"]]
    table = table[table["age"].notna()]
    age_csv = os.path.join(args.work, "data", "age.csv")
    table[["image_path", "age", "lesion_id"]].to_csv(age_csv, index=False)
    weights = lite0_weights()
    print(f"{len(table)} images, {table['lesion_id'].nunique()} lesions, ages {table['age'].min():g}-"
          f"{table['age'].max():g} ({table['age'].nunique()} distinct)")
    print("| seed | test n | test MAE | test RMSE | Pearson r | baseline MAE (train mean) | best epoch | training s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        out = os.path.join(args.work, f"seed_{seed}")
        summary = run_tool(age_csv, zip_path, out, "--target-column", "age", "--sample-id-column", "lesion_id",
                           "--model-name", "tf_efficientnet_lite0", "--pretrained-weights", weights,
                           "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--random-seed",
                           str(seed))
        assert summary["task"] == "regression", summary["task"]
        predictions = pd.read_csv(os.path.join(out, "predictions.csv"))
        test = predictions[predictions["split"] == "test"]
        train_mean = predictions.loc[predictions["split"] == "train", "true_value"].mean()
        error = test["predicted_value"] - test["true_value"]
        pearson = np.corrcoef(test["predicted_value"], test["true_value"])[0, 1]
        train_s = next(v for k, v in summary["timings_s"].items() if k.startswith("training"))
        print(f"| {seed} | {len(test)} | {error.abs().mean():.2f} | {np.sqrt((error ** 2).mean()):.2f} | "
              f"{pearson:.3f} | {(test['true_value'] - train_mean).abs().mean():.2f} | "
              f"{summary['training']['best_epoch']} | {train_s:.0f} |")


if __name__ == "__main__":
    main()
