#!/usr/bin/env python3
"""Metadata fusion (issue 25 item 1): image + age, sex, localization against the image alone, paired.

A lesion-grouped random subset of ../shared/data/ham10000/ham10000_200x150 (whole lesions drawn until about
--images images; trust_subgroups_ood.build_subset), resized to --image-size px. Two runs of the tool with the
same split (seed, lesion grouping, leakage guard: the split does not depend on the inputs) and the same
training options (tf_efficientnet_lite0 from offline ImageNet weights): one with ``--tabular-columns
age,sex,localization``, one without. Both arms run at once, one thread each, so they share the machine's
load. On the common test images: balanced accuracy and macro ROC-AUC of each arm and their difference
(fusion - image only), with a paired 95% percentile bootstrap that draws lesions (with their leakage-guard
duplicates) whole, the same draws for both arms (bootstrap.py's cluster draws).

    python bench/fusion.py [--images 1000] [--epochs 3] [--image-size 96] [--work /tmp/fusion_bench]

Not a test: it trains for many minutes.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, lite0_weights  # noqa: E402
from trust_subgroups_ood import build_subset  # noqa: E402

from image_learner.evaluation import bootstrap, metrics  # noqa: E402

COLUMNS = "age,sex,localization"


def _command(csv, zip_path, out, args, fused: bool) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", csv, "--image-zip", zip_path,
            "--output-dir", out, "--overwrite", "--no-report", "--model-name", "tf_efficientnet_lite0",
            "--pretrained-weights", lite0_weights(), "--image-size", str(args.image_size), "--epochs",
            str(args.epochs), "--batch-size", "32", "--sample-id-column", "lesion_id", "--random-seed", "42",
            "--preprocessing-workers", "1", *(["--tabular-columns", COLUMNS] if fused else [])]


def _scores(table: pd.DataFrame, classes: list[str]) -> tuple[float, float]:
    proba = table[[f"prob_{c}" for c in classes]].to_numpy(float)
    bacc = skm.balanced_accuracy_score(table["true_label"], table["predicted_label"])
    return float(bacc), float(metrics.roc_auc(table["true_label"].to_numpy(), proba, classes))


def paired(image_only: pd.DataFrame, fused: pd.DataFrame, classes: list[str], n: int = 1000, seed: int = 42) -> dict:
    """Each arm's balanced accuracy and ROC-AUC and the paired differences with 95% intervals over lesions."""
    groups = bootstrap.cluster_ids(image_only)
    base, fuse = _scores(image_only, classes), _scores(fused, classes)
    bacc, auc = [], []
    for rows in bootstrap.resample_rows(len(image_only), groups, n, seed):
        a, b = image_only.iloc[rows], fused.iloc[rows]
        sa, sb = _scores(a, classes), _scores(b, classes)
        bacc.append(sb[0] - sa[0])
        if a["true_label"].nunique() == len(classes):  # a class drawn out: its one-vs-rest ROC-AUC is undefined
            auc.append(sb[1] - sa[1])
    return {"image_only": {"balanced_accuracy": base[0], "roc_auc": base[1]},
            "fusion": {"balanced_accuracy": fuse[0], "roc_auc": fuse[1]},
            "delta": {"balanced_accuracy": [fuse[0] - base[0], *np.percentile(bacc, [2.5, 97.5])],
                      "roc_auc": [fuse[1] - base[1], *np.percentile(auc, [2.5, 97.5])]},
            "resamples": {"balanced_accuracy": len(bacc), "roc_auc (every class drawn)": len(auc)},
            "test_images": int(len(image_only)), "test_groups": int(groups.max() + 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--work", default="/tmp/fusion_bench")
    parser.add_argument("--analyse-only", action="store_true", help="reuse the two finished runs in --work")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    csv, zip_path = build_subset(args.work, args.images, args.image_size, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("load before:", os.getloadavg(), flush=True)
    started = time.time()
    outs = {arm: os.path.join(args.work, arm) for arm in ("image_only", "fusion")}
    procs = {} if args.analyse_only else {
        arm: subprocess.Popen(_command(csv, zip_path, out, args, arm == "fusion"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for arm, out in outs.items()}
    walls = {}
    for arm, proc in procs.items():
        _, err = proc.communicate()
        walls[arm] = round(time.time() - started, 1)
        if proc.returncode:
            raise RuntimeError(f"{arm} failed:\n{err[-3000:]}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("load after:", os.getloadavg(), flush=True)
    tables = {arm: pd.read_csv(os.path.join(out, "predictions.csv")) for arm, out in outs.items()}
    tests = {arm: t[t["split"] == "test"].set_index("image").sort_index() for arm, t in tables.items()}
    assert tests["image_only"].index.equals(tests["fusion"].index), "the two arms' test images differ"
    with open(os.path.join(outs["fusion"], "run_summary.json")) as handle:
        summary = json.load(handle)
    classes = summary["classes"]
    result = paired(tests["image_only"].reset_index(), tests["fusion"].reset_index(), classes)
    result.update(wall_s=walls, cpu_s_both_arms=round(cpu.ru_utime + cpu.ru_stime, 1),
                  split_counts=summary["dataset"]["split_counts"], tabular=summary["model"].get("tabular_description"),
                  best_epochs={arm: json.load(open(os.path.join(out, "run_summary.json")))["training"]["best_epoch"]
                               for arm, out in outs.items()})
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.work, "fusion_result.json"), "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
