#!/usr/bin/env python3
"""k-fold cross-validation against one 70/10/20 split, the same budget (model, image size, epochs, early stop,
batch): tf_efficientnet_lite0 (offline ImageNet weights, fine-tuned) on the 258 shared HAM10000 originals
(600x450, grouped by lesion). For each: the balanced accuracy and the width of its 95% bootstrap interval
(single split: the test split's; cross-validation: the pooled out-of-fold predictions'; lesions resampled
whole, the number of lesion groups in the "images scored" column), and for
cross-validation the spread across folds (mean ± sd, min–max). Prints a markdown table and writes it to
``--table``.

    python bench/cross_validation.py [--folds 5] [--image-size 128] [--epochs 10] [--seeds 42]
    python bench/cross_validation.py --smoke      # 2 folds, 32 px, 1 epoch: checks that it runs
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_set, lite0_weights, run_tool  # noqa: E402


def _metrics(out: str) -> dict:
    with open(os.path.join(out, "metrics.json")) as handle:
        return json.load(handle)


def _scored(entry: dict) -> str:
    """Images scored and the groups their interval resamples (metrics.json's ci95_basis)."""
    basis = entry.get("ci95_basis") or {}
    return f"{entry['n']} ({basis['groups']} groups)" if basis else str(entry["n"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--early-stop", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--work", default="/tmp/cv_bench")
    parser.add_argument("--table", default=None, help="markdown table file (default: WORK/cross_validation.md)")
    parser.add_argument("--smoke", action="store_true", help="2 folds, 32 px, 1 epoch: only checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.folds, args.image_size, args.epochs = 2, 32, 1
    csv, zip_path = build_set(os.path.join(args.work, "data"), side=None, flips=False)
    common = ["--model-name", "tf_efficientnet_lite0", "--pretrained-weights", lite0_weights(),
              "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--early-stop", str(args.early_stop),
              "--batch-size", str(args.batch_size), "--sample-id-column", "lesion_id"]
    lines = [f"tf_efficientnet_lite0, {args.image_size} px, up to {args.epochs} epochs (early stop "
             f"{args.early_stop}), batch {args.batch_size}; 258 HAM10000 originals grouped by lesion", "",
             "| design | seed | images scored | balanced acc. | 95% interval | interval width | fold spread: mean ± sd "
             "(min–max) | kept epochs | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    widths = {"split": [], "cv": []}
    for seed in args.seeds:
        out = os.path.join(args.work, f"split_{seed}")
        summary = run_tool(csv, zip_path, out, *common, "--random-seed", str(seed))
        test = _metrics(out)["test"]
        low, high = test["ci95"]["balanced_accuracy"]
        widths["split"].append(high - low)
        lines.append(f"| one 70/10/20 split (test) | {seed} | {_scored(test)} | {test['balanced_accuracy']:.3f} | "
                     f"{low:.3f}–{high:.3f} | {high - low:.3f} | – | {summary['training']['best_epoch']} | "
                     f"{summary['wall_s']:.0f} |")
        print(lines[-1], flush=True)

        out = os.path.join(args.work, f"cv{args.folds}_{seed}")
        summary = run_tool(csv, zip_path, out, *common, "--random-seed", str(seed),
                           "--cross-validation", str(args.folds))
        cv = _metrics(out)["cross_validation"]
        pooled = cv["pooled"]
        low, high = pooled["ci95"]["balanced_accuracy"]
        widths["cv"].append(high - low)
        folds = np.array([f["balanced_accuracy"] for f in cv["folds"]])
        kept = summary["cross_validation"]["kept_epochs"]
        lines.append(f"| {args.folds}-fold CV (pooled out-of-fold) | {seed} | {_scored(pooled)} | "
                     f"{pooled['balanced_accuracy']:.3f} | {low:.3f}–{high:.3f} | {high - low:.3f} | "
                     f"{folds.mean():.3f} ± {folds.std(ddof=1):.3f} ({folds.min():.3f}–{folds.max():.3f}) | "
                     f"{', '.join(map(str, kept))} → final {summary['cross_validation']['final_epochs']} | "
                     f"{summary['wall_s']:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Mean interval width: one split {np.mean(widths['split']):.3f}, {args.folds}-fold CV "
                  f"{np.mean(widths['cv']):.3f}."]
    print(lines[-1])
    table = args.table or os.path.join(args.work, "cross_validation.md")
    with open(table, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"table written to {table}")


if __name__ == "__main__":
    main()
