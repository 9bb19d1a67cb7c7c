#!/usr/bin/env python3
"""Fold ensemble against the refit (issue 25 item 3), on the same held-out test images, paired.

A lesion-grouped random subset of ../shared/data/ham10000/ham10000_200x150 (whole lesions drawn until about
--images images; trust_subgroups_ood.build_subset), resized to --image-size px, with a split column that holds
out --test-share of the lesions (seeded) as test rows. One run of the tool with ``--cross-validation K
--ensemble folds`` (tf_efficientnet_lite0 from offline ImageNet weights): its metrics.json ``ensemble`` holds
the fold ensemble's and the refit's test metrics and their paired difference (balanced accuracy, lesions
drawn whole). Printed and written to <work>/fold_ensemble_result.json with wall and CPU seconds and the load.

    python bench/fold_ensemble.py [--images 1000] [--folds 3] [--epochs 3] [--image-size 96] [--work DIR]

Not a test: it trains K + 1 models for many minutes.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, lite0_weights  # noqa: E402
from trust_subgroups_ood import build_subset  # noqa: E402


def with_test_lesions(csv: str, share: float, seed: int) -> str:
    """The subset's CSV with a split column: ``share`` of the lesions (seeded draw) test, the rest train."""
    table = pd.read_csv(csv)
    lesions = table["lesion_id"].drop_duplicates().sample(frac=1, random_state=seed).to_numpy()
    test = set(lesions[: max(1, int(round(share * len(lesions))))])
    table["split"] = np.where(table["lesion_id"].isin(test), "test", "train")
    out = csv.replace(".csv", "_split.csv")
    table.to_csv(out, index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--test-share", type=float, default=0.2)
    parser.add_argument("--ensemble", default="folds", choices=("folds", "folds+refit"))
    parser.add_argument("--work", default="/tmp/fold_ensemble_bench")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    csv, zip_path = build_subset(args.work, args.images, args.image_size, seed=0)
    csv = with_test_lesions(csv, args.test_share, seed=0)
    out = os.path.join(args.work, "run")
    command = [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", csv, "--image-zip", zip_path,
               "--output-dir", out, "--overwrite", "--no-report", "--no-audit", "--model-name",
               "tf_efficientnet_lite0", "--pretrained-weights", lite0_weights(), "--image-size", str(args.image_size),
               "--epochs", str(args.epochs), "--batch-size", "32", "--sample-id-column", "lesion_id",
               "--random-seed", "42", "--preprocessing-workers", "1", "--cross-validation", str(args.folds),
               "--ensemble", args.ensemble]
    load_before = os.getloadavg()
    started = time.time()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = round(time.time() - started, 1)
    if done.returncode:
        raise RuntimeError(f"the run failed:\n{done.stderr[-3000:]}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(out, "metrics.json")) as handle:
        comparison = json.load(handle)["ensemble"]
    keep = ("n", "balanced_accuracy", "accuracy", "roc_auc_macro")
    result = {"images": args.images, "folds": args.folds, "epochs": args.epochs, "image_size": args.image_size,
              "mode": comparison["mode"], "members": comparison["members"], "test_rows": comparison["test_rows"],
              **{side: {k: comparison[side].get(k) for k in keep} | {"ci95_balanced_accuracy": (
                  comparison[side].get("ci95") or {}).get("balanced_accuracy")}
                 for side in ("ensemble_test", "refit_test")},
              "paired_difference": comparison["paired_difference"], "wall_s": wall,
              "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1), "load_before": load_before,
              "load_after": os.getloadavg(), "command": " ".join(command)}
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.work, "fold_ensemble_result.json"), "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
