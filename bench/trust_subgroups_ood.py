#!/usr/bin/env python3
"""Subgroups and the out-of-distribution flag (issue 23 #4, #5) on a lesion-grouped HAM10000 subset.

A random subset of lesions of ../shared/data/ham10000/ham10000_200x150 (all images of a drawn lesion,
about --images images), resized to --image-size px, is trained on with tf_efficientnet_lite0 from offline
ImageNet weights, split grouped by lesion, with ``--subgroup-columns sex,localization,age`` and the OOD
threshold at ``--ood-keep-rate``. Then ``predict`` runs on the test split's images and on images of other
kinds built from them or from elsewhere:
- colour-distorted copies of the test images (channels swapped RGB -> BGR, and colours inverted);
- handwritten digits (scikit-learn's bundled 8x8 digits, upscaled, grey on black; no download).
Printed and written as markdown: the OOD score's AUROC separating the test images from each other kind,
the share flagged of each (on the test images: the false-flag rate at the keep rate), and the sex and
site slices with their 95% intervals.

    python bench/trust_subgroups_ood.py [--images 1200] [--epochs 5] [--image-size 96] [--work /tmp/trust_subgroups_ood_bench]

Not a test: it trains for minutes.
"""

import argparse
import io
import json
import os
import sys
import subprocess
import zipfile

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, lite0_weights, run_tool  # noqa: E402

SOURCE = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def build_subset(out_dir: str, n_images: int, side: int, seed: int) -> tuple[str, str]:
    """Whole lesions drawn at random until about ``n_images`` images; ZIP of PNGs + CSV with the metadata."""
    meta = pd.read_csv(os.path.join(SOURCE, "metadata.csv"))
    lesions = meta["lesion_id"].drop_duplicates().sample(frac=1, random_state=seed)
    sizes = meta.groupby("lesion_id").size()
    keep = lesions[sizes[lesions].cumsum().to_numpy() <= n_images]
    subset = meta[meta["lesion_id"].isin(set(keep))]
    zip_path = os.path.join(out_dir, "images.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for row in subset.itertuples():
            img = Image.open(os.path.join(SOURCE, row.image_path)).convert("RGB").resize((side, side))
            archive.writestr(os.path.basename(row.image_path).replace(".jpg", ".png"), _png(img))
    table = pd.DataFrame({"image_path": [os.path.basename(p).replace(".jpg", ".png") for p in subset["image_path"]],
                          "label": subset["dx"], "lesion_id": subset["lesion_id"], "sex": subset["sex"],
                          "localization": subset["localization"], "age": subset["age"]})
    csv_path = os.path.join(out_dir, "metadata.csv")
    table.to_csv(csv_path, index=False)
    return csv_path, zip_path


def build_other_kinds(train_zip: str, test_images: list[str], out_dir: str, side: int) -> dict[str, str]:
    """ZIPs: the test images as they are, two colour distortions of them, and digits."""
    from sklearn.datasets import load_digits

    kinds = {"test images (in distribution)": lambda img: img,
             "test images, channels swapped (BGR)": lambda img: Image.merge("RGB", img.split()[::-1]),
             "test images, colours inverted": ImageOps.invert}
    paths = {}
    with zipfile.ZipFile(train_zip) as source:
        originals = {name: Image.open(io.BytesIO(source.read(name))).convert("RGB") for name in test_images}
    for k, (kind, change) in enumerate(kinds.items()):
        paths[kind] = os.path.join(out_dir, f"kind{k}.zip")
        with zipfile.ZipFile(paths[kind], "w") as archive:
            for name, img in originals.items():
                archive.writestr(name, _png(change(img)))
    digits = load_digits().images[:len(test_images)]
    paths["handwritten digits (scikit-learn)"] = os.path.join(out_dir, "digits.zip")
    with zipfile.ZipFile(paths["handwritten digits (scikit-learn)"], "w") as archive:
        for i, digit in enumerate(digits):
            img = Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((side, side)).convert("RGB")
            archive.writestr(f"digit_{i}.png", _png(img))
    return paths


def predict(model: str, images: str, out: str) -> pd.DataFrame:
    subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "predict", "--model", model,
                    "--image-zip", images, "--output-dir", out, "--overwrite"], check=True, capture_output=True)
    return pd.read_csv(os.path.join(out, "predictions.csv"))


def _ci(entry: dict, name: str) -> str:
    value, ci = entry.get(name), (entry.get("ci95") or {}).get(name)
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "") + (
        " ⚑" if name in entry.get("worse_than_overall", []) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", default="/tmp/trust_subgroups_ood_bench")
    parser.add_argument("--reuse", action="store_true", help="reuse a finished training run in WORK/train")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    out = os.path.join(args.work, "train")
    zip_path = os.path.join(args.work, "images.zip")
    if args.reuse:
        summary = json.load(open(os.path.join(out, "run_summary.json")))
        summary["wall_s"] = float("nan")
    else:
        csv, zip_path = build_subset(args.work, args.images, args.image_size, args.seed)
        summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                           lite0_weights(), "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                           "--early-stop", "0", "--batch-size", "32", "--random-seed", str(args.seed),
                           "--sample-id-column", "lesion_id", "--subgroup-columns", "sex,localization,age",
                           "--ood-keep-rate", "0.95", "--preprocessing-workers", "2")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    split = pd.read_csv(os.path.join(out, "split.csv"))
    test_images = split.loc[split["split"] == "test", "image"].tolist()
    record = summary["ood"]
    lines = [f"Subset: {len(split)} images of {split['sample_id'].nunique()} lesions (seed {args.seed}), "
             f"{args.image_size} px, lite0 (offline ImageNet weights), {args.epochs} epochs; test: "
             f"{len(test_images)} images. Test balanced accuracy {metrics['test']['balanced_accuracy']:.3f}, "
             f"ROC-AUC {metrics['test']['roc_auc_macro']:.3f}. OOD threshold: top-class probability "
             f"{record['threshold']:.4f}, set on {record['rows']} validation images at keep rate "
             f"{record['keep_rate']}; wall {summary['wall_s']:.0f} s.", "",
             "| images predicted | n | flagged ood | AUROC (test images vs these) |", "|---|---|---|---|"]
    kinds = build_other_kinds(zip_path, test_images, args.work, args.image_size)
    scores = {kind: predict(os.path.join(out, "trained_model.zip"), path, os.path.join(args.work, f"p{k}"))
              for k, (kind, path) in enumerate(kinds.items())}
    inside = scores["test images (in distribution)"]
    for kind, table in scores.items():
        auroc = "–"
        if table is not inside:  # OOD is the positive class; a lower top-class probability is more OOD
            y = np.r_[np.zeros(len(inside)), np.ones(len(table))]
            auroc = f"{skm.roc_auc_score(y, -np.r_[inside['ood_score'], table['ood_score']]):.3f}"
        lines.append(f"| {kind} | {len(table)} | {int(table['ood'].sum())} ({table['ood'].mean():.1%}) | {auroc} |")
    groups = metrics["subgroups"]
    lines += ["", f"Subgroups ({groups['rows']}; 95% intervals, lesions resampled whole; ⚑ interval wholly worse "
              "than overall):", "", "| column | slice | images | lesions | balanced accuracy | ROC-AUC | ECE |",
              "|---|---|---|---|---|---|---|",
              f"| overall | | {groups['overall']['n_images']} | {groups['overall']['n_groups']} | "
              f"{_ci(groups['overall'], 'balanced_accuracy')} | {_ci(groups['overall'], 'roc_auc')} | "
              f"{_ci(groups['overall'], 'expected_calibration_error')} |"]
    for column in groups["columns"]:
        for entry in column["slices"]:
            lines.append(f"| {column['column']} | {entry['slice']} | {entry['n_images']} | {entry['n_groups']} | "
                         f"{_ci(entry, 'balanced_accuracy')} | {_ci(entry, 'roc_auc')} | "
                         f"{_ci(entry, 'expected_calibration_error')} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.work, "trust_subgroups_ood.md"), "w") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
