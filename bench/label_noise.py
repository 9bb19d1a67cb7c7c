#!/usr/bin/env python3
"""Label noise: flip a fraction of labels at random (to another class, seeded) on a lesion-grouped subset (classes nv, mel, bkl by default) of
../shared/data/ham10000/ham10000_200x150/, cross-validate with tf_efficientnet_lite0 (offline ImageNet
weights), then score label_issues.csv against the known flips: AUROC of (1 - quality score) for the flipped
rows among the scored (out-of-fold) rows, precision at k = number flipped, and how many flips were flagged.
Also the audit stage's wall time from run_summary.json.

    python bench/label_noise.py [--images 600] [--flip 0.05] [--folds 3] [--epochs 3] [--image-size 96] [--no-fine-tune]
"""

import argparse
import json
import os
import sys
import tempfile
import zipfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, lite0_weights, run_tool  # noqa: E402

HAM = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")


def build(out_dir: str, n: int, flip: float, seed: int, keep_classes: list[str]):
    """(csv, zip, flipped image names): whole lesions of ``keep_classes`` sampled until n images, then flip*n
    labels changed to another of those classes."""
    meta = pd.read_csv(os.path.join(HAM, "metadata.csv"))
    meta = meta[meta["dx"].isin(keep_classes)]
    rng = np.random.default_rng(seed)
    lesions = rng.permutation(meta["lesion_id"].unique())
    chosen = meta[meta["lesion_id"].isin(lesions[:n])]
    order = {lesion: k for k, lesion in enumerate(lesions)}
    chosen = chosen.assign(o=chosen["lesion_id"].map(order)).sort_values("o").head(n).drop(columns="o")
    classes = sorted(chosen["dx"].unique())
    labels = chosen["dx"].to_numpy().copy()
    flipped = rng.choice(len(chosen), int(round(flip * len(chosen))), replace=False)
    for i in flipped:
        labels[i] = rng.choice([c for c in classes if c != labels[i]])
    names = [os.path.basename(p) for p in chosen["image_path"]]
    zip_path = os.path.join(out_dir, "images.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for path, name in zip(chosen["image_path"], names):
            archive.write(os.path.join(HAM, path), name)
    csv = os.path.join(out_dir, "metadata.csv")
    pd.DataFrame({"image_path": names, "label": labels, "lesion_id": chosen["lesion_id"]}).to_csv(csv, index=False)
    return csv, zip_path, {names[i] for i in flipped}


def _margin_auroc(out: str, flipped: set) -> float:
    """The same AUROC with cleanlab's normalized_margin instead of self_confidence (the choice's check)."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.metrics import roc_auc_score

    predictions = pd.read_csv(os.path.join(out, "predictions.csv"), keep_default_na=False, dtype={"image": str})
    rows = predictions[predictions["split"] == "cross_validation"]
    classes = [c[5:] for c in rows.columns if c.startswith("prob_")]
    labels = rows["true_label"].map({c: k for k, c in enumerate(classes)}).to_numpy()
    probabilities = rows[[f"prob_{c}" for c in classes]].to_numpy(float)
    scores = get_label_quality_scores(labels, probabilities, method="normalized_margin")
    return round(float(roc_auc_score(rows["image"].isin(flipped), 1 - scores)), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--classes", default="nv,mel,bkl", help="the classes kept (rare ones cannot fill K folds)")
    parser.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--keep", default=None, help="write the run here (default: a temporary folder)")
    args = parser.parse_args()
    from sklearn.metrics import roc_auc_score

    work = args.keep or tempfile.mkdtemp()
    csv, zip_path, flipped = build(work, args.images, args.flip, args.seed, args.classes.split(","))
    out = os.path.join(work, "run")
    summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                       lite0_weights(), "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                       "--cross-validation", str(args.folds), "--split-probabilities", "0.8", "0.2", "0",
                       "--sample-id-column", "lesion_id", "--random-seed", str(args.seed),
                       "--preprocessing-workers", "1", *([] if args.fine_tune else ["--no-fine-tune"]),
                       report=True)
    issues = pd.read_csv(os.path.join(out, "label_issues.csv"), keep_default_na=False, dtype={"image": str})
    is_flip = issues["image"].isin(flipped)
    k = int(is_flip.sum())
    result = {"images": len(issues), "flipped_scored": k, "basis": summary["audit"]["label_issues"]["basis"],
              "auroc": round(float(roc_auc_score(is_flip, 1 - issues["quality_score"])), 3),
              "precision_at_k": round(float(is_flip.head(k).mean()), 3),
              "flagged": int(issues["flagged"].sum()),
              "flips_flagged": int((issues["flagged"] & is_flip).sum()),
              "flag_precision": round(float(is_flip[issues["flagged"]].mean()), 3) if issues["flagged"].any() else None,
              "auroc_normalized_margin": _margin_auroc(out, flipped),
              "oof_balanced_accuracy": summary["metrics"]["cross_validation"]["pooled"]["balanced_accuracy"],
              "audit_stage_s": {s: t for s, t in summary["timings_s"].items() if "audit" in s or "report" in s},
              "total_s": round(summary["wall_s"], 1)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
