#!/usr/bin/env python3
"""Issue 23: does conformal coverage hold, and does temperature scaling help, on real HAM10000 images?

One model: a lesion-grouped subset of ../shared/data/ham10000/ham10000_200x150 (stratified by diagnosis,
every image of a chosen lesion kept), tf_efficientnet_lite0 with the offline ImageNet weights, trained
once by the tool. Its validation and test rows are then pooled and re-split 20 times (seeded, by lesion)
into a calibration half and a test half: on each, the temperature and the conformal quantile are fitted
on the calibration half with the tool's functions and scored on the test half.

    python bench/trust_coverage.py [--images 1500] [--size 96] [--epochs 4] [--seeds 20] [--work /tmp/trust_bench]
"""

import argparse
import json
import os
import sys
import zipfile

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import ROOT, lite0_weights, run_tool  # noqa: E402
from image_learner.evaluation import calibration, conformal  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")
TARGETS = (0.8, 0.9, 0.95)


def build_subset(n: int, out_dir: str, seed: int = 0) -> tuple[str, str]:
    """About ``n`` images, whole lesions, every diagnosis in its share of the full set."""
    os.makedirs(out_dir, exist_ok=True)
    table = pd.read_csv(os.path.join(DATA, "metadata.csv"))
    lesions = table.groupby("lesion_id")["dx"].first()
    rng = np.random.default_rng(seed)
    order = rng.permutation(lesions.index.to_numpy())
    share = n / len(table)
    picked, counts = [], {}
    wanted = (table["dx"].value_counts() * share).round().to_dict()
    per_lesion = table.groupby("lesion_id").size()
    for lesion in order:
        dx = lesions[lesion]
        if counts.get(dx, 0) < wanted.get(dx, 0):
            picked.append(lesion)
            counts[dx] = counts.get(dx, 0) + int(per_lesion[lesion])
    subset = table[table["lesion_id"].isin(set(picked))]
    csv_path, zip_path = os.path.join(out_dir, "metadata.csv"), os.path.join(out_dir, "images.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for path in subset["image_path"]:
            archive.write(os.path.join(DATA, path), path)
    subset[["image_path", "dx", "lesion_id"]].rename(columns={"dx": "label"}).to_csv(csv_path, index=False)
    return csv_path, zip_path


def resplit(lesion_ids: np.ndarray, seed: int) -> np.ndarray:
    """Booleans: calibration half (by lesion, seeded)."""
    unique = np.unique(lesion_ids)
    rng = np.random.default_rng(seed)
    calib = set(rng.permutation(unique)[: len(unique) // 2])
    return np.array([lesion in calib for lesion in lesion_ids])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--work", default="/tmp/trust_bench")
    args = parser.parse_args()
    csv, zip_path = build_subset(args.images, os.path.join(args.work, "data"))
    out = os.path.join(args.work, "run")
    if not os.path.exists(os.path.join(out, "predictions.csv")):
        run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights", lite0_weights(),
                 "--image-size", str(args.size), "--epochs", str(args.epochs), "--early-stop", "0",
                 "--sample-id-column", "lesion_id", "--batch-size", "32", "--preprocessing-workers", "1")
    found = json.load(open(os.path.join(out, "metrics.json")))
    summary = json.load(open(os.path.join(out, "run_summary.json")))
    classes = summary["classes"]
    table = pd.read_csv(os.path.join(out, "predictions.csv"), keep_default_na=False)
    trust = found["trust"]
    print(f"{len(table)} images, classes {classes}; the tool: T = {trust['temperature']:.3f} on "
          f"{trust['calibration_rows']} validation rows")
    cal = trust["calibration_test"]
    print(f"the tool, test ({cal['rows']}): ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, log loss "
          f"{cal['log_loss_before']:.3f} -> {cal['log_loss_after']:.3f}; arg-max unchanged {cal['argmax_unchanged']}")
    cov = trust["coverage_test"]
    print(f"the tool, test coverage at {trust['coverage']}: {cov['empirical']:.3f} (95% CI {cov['ci95'][0]:.3f}-"
          f"{cov['ci95'][1]:.3f}), mean set size {cov['mean_set_size']:.2f}")
    risk = trust["risk_coverage"]
    print(f"the tool, risk-coverage: balanced accuracy all {risk['balanced_accuracy_all']:.3f}, "
          f"80% most confident {risk['balanced_accuracy_at_80']:.3f}")

    pool = table[table["split"].isin(["validation", "test"])].reset_index(drop=True)
    scaled = pool[[f"prob_{c}" for c in classes]].to_numpy(float)
    raw = calibration.apply_temperature(scaled, 1 / trust["temperature"])  # the model's own softmax
    labels = pool["true_label"].astype(str).to_numpy()
    index = calibration.class_index(labels, classes)
    rows = {t: [] for t in TARGETS}
    calib_rows = []
    for seed in range(args.seeds):
        part = resplit(pool["sample_id"].astype(str).to_numpy(), seed)
        t = calibration.fit_temperature(raw[part], index[part])
        after = calibration.apply_temperature(raw, t)
        effect = calibration.before_after(labels[~part], raw[~part], after[~part], classes)
        acc = [float(np.mean(p[~part].argmax(1) == index[~part])) for p in (raw, after)]
        calib_rows.append({**effect, "temperature": t, "acc_before": acc[0], "acc_after": acc[1]})
        for target in TARGETS:
            q = conformal.conformal_quantile(conformal.true_class_scores(after[part], index[part]), target)
            sets = conformal.prediction_sets(after[~part], q)
            rows[target].append((sets[np.arange((~part).sum()), index[~part]].mean(), sets.sum(1).mean()))
    print(f"\n{args.seeds} seeds of re-splitting the {len(pool)} validation+test rows by lesion into "
          f"calibration/test halves:")
    print("| target coverage | mean empirical coverage (min-max) | mean set size |")
    print("|---|---|---|")
    for target in TARGETS:
        c = np.array([r[0] for r in rows[target]])
        s = np.array([r[1] for r in rows[target]])
        print(f"| {target} | {c.mean():.3f} ({c.min():.3f}-{c.max():.3f}) | {s.mean():.2f} |")
    frame = pd.DataFrame(calib_rows)
    print("\n| | before | after |\n|---|---|---|")
    for key, name in (("ece", "test ECE"), ("log_loss", "test log loss"), ("acc", "test accuracy")):
        print(f"| {name} (mean of {args.seeds}) | {frame[key + '_before'].mean():.3f} | "
              f"{frame[key + '_after'].mean():.3f} |")
    print(f"temperature: mean {frame['temperature'].mean():.3f} (min {frame['temperature'].min():.3f}, "
          f"max {frame['temperature'].max():.3f}); arg-max unchanged in every seed: "
          f"{bool((frame['argmax_unchanged'] == 1.0).all())}")


if __name__ == "__main__":
    main()
