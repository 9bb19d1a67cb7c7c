#!/usr/bin/env python3
"""Issue 25 #2: does test-time augmentation (dihedral, 8 views) help on real HAM10000 images, and what does it
cost in predict?

A lesion-grouped subset of ../shared/data/ham10000/ham10000_200x150 (bench/trust_coverage.build_subset: whole
lesions, every diagnosis in its share), tf_efficientnet_lite0 with the offline ImageNet weights, trained twice
with the same seed: ``--tta none`` and ``--tta dihedral``. TTA does not touch training, so both runs hold the
same weights (checked: identical training histories); only the evaluation differs, including the temperature,
which each run fits on its own (plain or averaged) validation probabilities. Paired on the same test rows:
Δ balanced accuracy, ROC-AUC and ECE with 95% intervals over the same lesion-bootstrap resamples. Then predict
on the test images with the dihedral model, ``--tta none`` vs the model's own: the predicting stage's seconds.

Data: HAM10000 (Tschandl et al., Sci. Data 5, 180161, 2018), CC BY-NC-SA 4.0.

    python bench/tta_effect.py [--images 1500] [--size 128] [--epochs 5] [--work /tmp/tta_bench]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import ROOT, lite0_weights, run_tool  # noqa: E402
from trust_coverage import build_subset  # noqa: E402
from image_learner.evaluation import bootstrap, metrics  # noqa: E402


def _test_rows(out: str) -> tuple[pd.DataFrame, list[str]]:
    table = pd.read_csv(os.path.join(out, "predictions.csv"))
    classes = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
    return table[table["split"] == "test"].reset_index(drop=True), classes


def _paired(plain: pd.DataFrame, tta: pd.DataFrame, classes: list[str], lesions: np.ndarray, n: int = 1000) -> dict:
    """Point values of both arms and the Δ (tta - plain) with a 95% interval over the same lesion resamples."""
    groups = pd.factorize(lesions)[0]
    arms = {}
    for name, part in (("none", plain), ("dihedral", tta)):
        y, p = part["true_label"].astype(str).to_numpy(), part[[f"prob_{c}" for c in classes]].to_numpy()
        point = metrics.split_metrics(y, p, classes, part["predicted_label"].astype(str).to_numpy())
        samples = metrics.bootstrap_samples(y, p, classes, part["predicted_label"].astype(str).to_numpy(),
                                            ("balanced_accuracy", "roc_auc_macro"), n, 42, groups)
        ece = np.array([metrics.expected_calibration_error(y[rows], p[rows], classes)[0]
                        for rows in bootstrap.resample_rows(len(y), groups, n, 42)])
        arms[name] = {"point": {k: point.get(k) for k in ("balanced_accuracy", "accuracy", "roc_auc_macro")}
                      | {"ece": metrics.expected_calibration_error(y, p, classes)[0]},
                      "samples": {**samples, "ece": ece}}
    out = {name: arm["point"] for name, arm in arms.items()}
    for metric in ("balanced_accuracy", "roc_auc_macro", "ece"):
        delta = arms["dihedral"]["samples"][metric] - arms["none"]["samples"][metric]
        out[f"delta_{metric}"] = {"point": out["dihedral"][metric] - out["none"][metric],
                                  "ci95": metrics.percentile_intervals({"d": delta})["d"]}
    return out


def _predict_seconds(model_zip: str, images_zip: str, out: str, tta: str | None) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "predict", "--model", model_zip,
           "--image-zip", images_zip, "--output-dir", out, "--overwrite", "--preprocessing-workers", "1"]
    cmd += ["--tta", tta] if tta else []
    started = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    timings = json.load(open(os.path.join(out, "run_summary.json")))["timings_s"]
    predicting = sum(v for k, v in timings.items() if k.startswith("predicting "))
    return {"wall_s": round(time.time() - started, 1), "predicting_s": round(predicting, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", default="/tmp/tta_bench")
    args = parser.parse_args()
    csv, zip_path = build_subset(args.images, os.path.join(args.work, "data"))
    runs = {}
    for mode in ("none", "dihedral"):
        out = os.path.join(args.work, f"run-{mode}")
        if not os.path.exists(os.path.join(out, "predictions.csv")):
            summary = run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                               lite0_weights(), "--image-size", str(args.size), "--epochs", str(args.epochs),
                               "--early-stop", "0", "--sample-id-column", "lesion_id", "--batch-size", "32",
                               "--preprocessing-workers", "1", "--tta", mode)
            runs[mode] = summary["wall_s"]
    same = pd.read_csv(os.path.join(args.work, "run-none", "training_history.csv")).equals(
        pd.read_csv(os.path.join(args.work, "run-dihedral", "training_history.csv")))
    plain, classes = _test_rows(os.path.join(args.work, "run-none"))
    tta, _ = _test_rows(os.path.join(args.work, "run-dihedral"))
    assert plain["image"].tolist() == tta["image"].tolist(), "the two runs' test rows differ"
    lesions = pd.read_csv(csv).set_index("image_path").loc[plain["image_file"] if "image_file" in plain else
                                                           plain["image"], "lesion_id"].to_numpy()
    result = {"images": len(pd.read_csv(csv)), "test_rows": len(plain), "test_lesions": int(len(set(lesions))),
              "size": args.size, "epochs": args.epochs, "same_training_history": bool(same),
              "training_wall_s": runs, **_paired(plain, tta, classes, lesions)}
    # predict time: the test images alone, with the dihedral model, plain vs its own 8 views
    test_zip = os.path.join(args.work, "test_images.zip")
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(test_zip, "w", zipfile.ZIP_STORED) as dest:
        for name in (plain["image_file"] if "image_file" in plain else plain["image"]):
            dest.writestr(name, source.read(name))
    model = os.path.join(args.work, "run-dihedral", "trained_model.zip")
    result["predict"] = {mode: _predict_seconds(model, test_zip, os.path.join(args.work, f"predict-{mode}"), mode)
                         for mode in ("none", "dihedral")}
    result["predict"]["multiplier_predicting"] = round(result["predict"]["dihedral"]["predicting_s"]
                                                       / max(result["predict"]["none"]["predicting_s"], 1e-9), 2)
    result["predict"]["multiplier_wall"] = round(result["predict"]["dihedral"]["wall_s"]
                                                 / result["predict"]["none"]["wall_s"], 2)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
