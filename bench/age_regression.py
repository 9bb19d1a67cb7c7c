#!/usr/bin/env python3
"""Regression benchmark: patient age from the dermoscopy image, on the 258 shared HAM10000 originals
(600x450 JPEG, ../shared/data/ham10000/originals_600x450, labels.csv's ``age``), split grouped by
lesion, tf_efficientnet_lite0 from offline ImageNet weights, through the CLI
(``--task regression --target-column age --sample-id-column lesion_id``). Prints, per seed, the test
MAE with its 95% bootstrap interval against the baseline of always predicting the training images'
median age (with its interval, and the paired interval of the gain), and writes a markdown table. The
intervals resample lesions whole (sample id or duplicate group; the group count is in the test-images
column), as the tool's metrics.json does.

    python bench/age_regression.py [--seeds 42 43 44] [--epochs 15] [--image-size 224]
                                   [--work /tmp/age_bench] [--markdown /tmp/age_bench/age_regression.md]

Rows without an age are left out (counted in the output). Not a test: it trains for minutes.
"""

import argparse
import os
import sys
import zipfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.evaluation import regression_metrics  # noqa: E402
from common import SHARED, lite0_weights, run_tool  # noqa: E402


def build_age_set(out_dir: str) -> tuple[str, str, int]:
    """ZIP of the untouched originals + CSV (image_path, age, lesion_id); returns (csv, zip, rows
    left out for a missing age)."""
    os.makedirs(out_dir, exist_ok=True)
    labels = pd.read_csv(os.path.join(SHARED, "labels.csv"))
    aged = labels[pd.to_numeric(labels["age"], errors="coerce").notna()]
    zip_path = os.path.join(out_dir, "images.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for row in aged.itertuples():
            archive.write(os.path.join(SHARED, row.image_path), os.path.basename(row.image_path))
    csv_path = os.path.join(out_dir, "metadata.csv")
    pd.DataFrame({"image_path": [os.path.basename(p) for p in aged["image_path"]], "age": aged["age"].astype(float),
                  "lesion_id": aged["lesion_id"]}).to_csv(csv_path, index=False)
    return csv_path, zip_path, len(labels) - len(aged)


def _interval(ci: dict, name: str) -> str:
    low_high = ci.get(name)
    return f"{low_high[0]:.1f}–{low_high[1]:.1f}" if low_high else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", default="/tmp/age_bench")
    parser.add_argument("--markdown", default=None, help="markdown table path (default: WORK/age_regression.md)")
    args = parser.parse_args()
    csv, zip_path, no_age = build_age_set(os.path.join(args.work, "data"))
    weights = lite0_weights()
    header = ("| seed | test images | test MAE (95% CI) | baseline MAE: train median (95% CI) | "
              "gain (paired 95% CI) | test R² | test Spearman | best epoch | wall s |\n"
              "|---|---|---|---|---|---|---|---|---|")
    lines, maes, baselines = [], [], []
    print(f"{no_age} row(s) without an age left out")
    print(header)
    for seed in args.seeds:
        out = os.path.join(args.work, f"seed_{seed}")
        summary = run_tool(csv, zip_path, out, "--task", "regression", "--target-column", "age",
                           "--sample-id-column", "lesion_id", "--model-name", "tf_efficientnet_lite0",
                           "--pretrained-weights", weights, "--image-size", str(args.image_size),
                           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                           "--random-seed", str(seed))
        # From predictions.csv with the tool's own functions, so the baseline is there whatever
        # metrics.json holds; the seed is the split's, as in the run.
        predictions = pd.read_csv(os.path.join(out, "predictions.csv"))
        test = regression_metrics.metrics_by_split(predictions, seed)["test"]
        ci = test.get("ci95") or {}
        maes.append(test["mae"])
        baselines.append(test["baseline_median_mae"])
        r2, rho = test.get("r2"), test.get("spearman_r")
        groups = test["ci95_basis"]["groups"]
        line = (f"| {seed} | {test['n']} ({groups} groups) | {test['mae']:.1f} ({_interval(ci, 'mae')}) | "
                f"{test['baseline_median_mae']:.1f} ({_interval(ci, 'baseline_median_mae')}; median "
                f"{test['baseline_median']:.0f}) | {test['mae_gain_over_baseline']:+.1f} "
                f"({_interval(ci, 'mae_gain_over_baseline')}) | {'–' if r2 is None else f'{r2:.2f}'} | "
                f"{'–' if rho is None else f'{rho:.2f}'} | {summary.get('training', {}).get('best_epoch', '–')} | "
                f"{summary['wall_s']:.0f} |")
        lines.append(line)
        print(line, flush=True)
    closing = (f"Mean over {len(maes)} seed(s): test MAE {np.mean(maes):.1f} years against {np.mean(baselines):.1f} "
               f"for always predicting the training median ({no_age} image(s) without an age left out; "
               f"tf_efficientnet_lite0, offline ImageNet weights, {args.image_size} px, {args.epochs} epochs, "
               f"split grouped by lesion).")
    print(closing)
    markdown = args.markdown or os.path.join(args.work, "age_regression.md")
    with open(markdown, "w") as handle:
        handle.write("\n".join([header, *lines, "", closing, ""]))
    print(f"markdown table: {markdown}")


if __name__ == "__main__":
    main()
