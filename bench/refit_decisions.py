#!/usr/bin/env python3
"""The refit of a fold-ensemble run, on the test rows, under the balanced decision's rules (issue 25).

A run made with ``--cross-validation K --ensemble folds`` delivers the mean of the K fold models; its model ZIP
also holds the refit (the main weights) and its predictions.csv the ensemble's test probabilities, but not the
refit's. This rebuilds the model ZIP the same run would have written with ``--ensemble refit`` (the fold weight
files and the manifest's ``ensemble`` record left out: the refit, its temperature, its trust record and its
test-time views unchanged), has ``image-learner predict`` score the test images with it, and decides both
models' test probabilities with the α the tool's rule picks on the run's pooled out-of-fold rows (the gated rule,
class_decision.choose) and with the earlier rule's (the curve's top), paired over the same 1,000 lesion
resamples. Nothing is chosen on the test rows.

    python bench/refit_decisions.py --run /work/bench_runs/preset/run-cv3_each_balanced160 \
        --data /work/bench_runs/preset/data/ham_7347.zip [--threads 2]

The runs are bench/preset_best.py's cv3 arms (all 7,347 images of ham10000_200x150; HAM10000: Tschandl et
al., Sci. Data 5, 180161 (2018), CC BY-NC-SA 4.0). Not a test: it predicts 1,471 images in 8 views (minutes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, paired_arms, paired_delta  # noqa: E402
from image_learner.evaluation import bootstrap, class_decision, metrics  # noqa: E402


def refit_only(model_zip: str, dest: str) -> None:
    """The model ZIP without its fold members and ensemble record: what --ensemble refit writes."""
    with zipfile.ZipFile(model_zip) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if os.path.basename(item.filename).startswith("fold_"):
                continue
            data = src.read(item.filename)
            if item.filename.endswith("image_learner.json"):
                manifest = json.loads(data)
                manifest.pop("ensemble", None)
                data = json.dumps(manifest, indent=2).encode()
            out.writestr(item, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the image ZIP the run was trained from")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    table = pd.read_csv(os.path.join(args.run, "predictions.csv"), dtype={"sample_id": str})
    classes = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
    pooled, test = table[table["split"] == "cross_validation"], table[table["split"] == "test"]
    columns = [f"prob_{c}" for c in classes]
    chosen = class_decision.choose(pooled["true_label"].astype(str), pooled[columns].to_numpy(float), classes,
                                   pooled["true_label"].astype(str), "pooled out-of-fold rows",
                                   bootstrap.cluster_ids(pooled), 42)
    priors = class_decision.log_priors(pooled["true_label"].astype(str), classes)
    with tempfile.TemporaryDirectory() as scratch:
        model = os.path.join(scratch, "refit_model.zip")
        refit_only(os.path.join(args.run, "trained_model.zip"), model)
        csv = os.path.join(scratch, "test.csv")
        test[["image"]].rename(columns={"image": "image_path"}).to_csv(csv, index=False)
        out = os.path.join(scratch, "predicted")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "predict", "--model",
                               model, "--image-zip", args.data, "--csv-file", csv, "--output-dir", out,
                               "--preprocessing-workers", str(args.threads)], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"predict failed:\n{done.stderr[-3000:]}")
        refit = pd.read_csv(os.path.join(out, "predictions.csv"))
        timings = json.load(open(os.path.join(out, "run_summary.json"))).get("timings_s")
    ensemble = test.sort_values("image").reset_index(drop=True)
    refit = refit.set_index("image").loc[ensemble["image"]].reset_index()
    groups = bootstrap.cluster_ids(ensemble)
    arms = {}
    for model_name, probabilities in (("ensemble", ensemble[columns].to_numpy(float)),
                                      ("refit", refit[columns].to_numpy(float))):
        for rule, alpha in (("argmax", 0.0), ("gated", chosen["alpha"]), ("ungated", chosen["highest_alpha"])):
            labels = np.asarray(classes)[class_decision.decide(probabilities, alpha * priors)]
            arms[f"{model_name}_{rule}"] = ensemble[["image", "true_label"]].assign(
                predicted_label=labels, **dict(zip(columns, probabilities.T)))
    points, samples = paired_arms(arms, classes, groups, ("balanced_accuracy", "accuracy", "roc_auc_macro"))
    for name, part in arms.items():  # the probabilities' calibration (the decision moves labels only)
        points[name]["expected_calibration_error"] = metrics.expected_calibration_error(
            part["true_label"].astype(str).to_numpy(), part[columns].to_numpy(float), classes)[0]
    result = {"run": os.path.abspath(args.run), "test_images": len(ensemble), "groups": int(groups.max()) + 1,
              "alpha_gated": chosen["alpha"], "alpha_ungated": chosen["highest_alpha"],
              "pooled_rows": len(pooled), "refit_predict_timings_s": timings,
              "test": {name: {k: round(v, 4) for k, v in point.items()
                              if k in ("balanced_accuracy", "accuracy", "roc_auc_macro", "expected_calibration_error")}
                       for name, point in points.items()},
              "test_ci95": {name: {m: metrics.percentile_intervals({m: samples[name][m]})[m]
                                   for m in ("balanced_accuracy", "accuracy")} for name in arms},
              "paired": {f"{new} - {old}": {m: paired_delta(points, samples, new, old, m)
                                            for m in ("balanced_accuracy", "accuracy")}
                         for new, old in (("ensemble_gated", "refit_gated"), ("refit_gated", "refit_ungated"),
                                          ("ensemble_gated", "ensemble_ungated"), ("refit_gated", "refit_argmax"))}}
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
