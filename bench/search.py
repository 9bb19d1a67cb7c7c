#!/usr/bin/env python3
"""Issue 25 #4: the best-found settings of ``--search lr,image_size`` against the defaults, on held-out test
lesions the search never saw, paired; and the wall time per trial.

A lesion-grouped random subset of ../shared/data/ham10000/ham10000_200x150 (whole lesions drawn until about
--images images; trust_subgroups_ood.build_subset), resized to --image-size px, with a split column holding out
--test-share of the lesions as test rows (fold_ensemble.with_test_lesions). Two runs of the tool, same seed,
same split, tf_efficientnet_lite0 from offline ImageNet weights, --epochs each (early stop as the tool's
default): "defaults" (--learning-rate 0.001, --image-size as given) and "search" (``--search lr,image_size
--search-trials T --search-folds K``: lr log-uniform 1e-5..3e-3, sizes half / three quarters / all of
--image-size; each trial K lesion-grouped folds of the non-test rows). Paired on the same test rows: Δ
balanced accuracy and ROC-AUC (search - defaults) with 95% intervals over the same lesion-bootstrap
resamples (bench/tta_effect.py's pattern). Printed and written to <work>/search_result.json with the trials
table, wall and CPU seconds and the load.

Data: HAM10000 (Tschandl et al., Sci. Data 5, 180161, 2018), CC BY-NC-SA 4.0.

    python bench/search.py [--images 600] [--image-size 64] [--epochs 3] [--trials 4] [--folds 2] [--work DIR]

Not a test: the search arm trains trials x folds + 1 models.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import ROOT, lite0_weights, paired_arms, paired_delta, test_predictions  # noqa: E402
from fold_ensemble import with_test_lesions  # noqa: E402
from trust_subgroups_ood import build_subset  # noqa: E402

METRICS = ("balanced_accuracy", "roc_auc_macro")


def _run(command: list[str]) -> dict:
    """One run of the tool: wall and CPU seconds (this child alone) and the load before and after."""
    before_cpu, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()
    started = time.time()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = round(time.time() - started, 1)
    if done.returncode:
        raise RuntimeError(f"the run failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before_cpu.ru_utime - before_cpu.ru_stime
    return {"wall_s": wall, "cpu_s": round(cpu, 1), "load_before": load, "load_after": os.getloadavg()}


def _paired(arms: dict[str, pd.DataFrame], classes: list[str], n: int = 1000) -> dict:
    """Point values of both arms and Δ (search - defaults) with a 95% interval over the same lesion resamples."""
    lesions = arms["defaults"]["sample_id"].to_numpy()
    points, samples = paired_arms(arms, classes, pd.factorize(lesions)[0],
                                  ("balanced_accuracy", "accuracy", "roc_auc_macro"), n)
    out = dict(points)
    for metric in METRICS:
        out[f"delta_{metric}"] = paired_delta(points, samples, "search", "defaults", metric)
    out["test_images"], out["test_lesions"] = len(lesions), int(len(set(lesions)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--test-share", type=float, default=0.25)
    parser.add_argument("--work", default="/tmp/search_bench")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    csv, zip_path = build_subset(args.work, args.images, args.image_size, seed=0)
    csv = with_test_lesions(csv, args.test_share, seed=0)
    common = [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", csv, "--image-zip", zip_path,
              "--overwrite", "--no-report", "--no-audit", "--model-name", "tf_efficientnet_lite0",
              "--pretrained-weights", lite0_weights(), "--image-size", str(args.image_size),
              "--epochs", str(args.epochs), "--batch-size", "32", "--sample-id-column", "lesion_id",
              "--random-seed", "42", "--preprocessing-workers", "1"]
    commands = {"defaults": common + ["--output-dir", os.path.join(args.work, "defaults")],
                "search": common + ["--output-dir", os.path.join(args.work, "search"), "--search", "lr,image_size",
                                    "--search-trials", str(args.trials), "--search-folds", str(args.folds)]}
    runs = {name: _run(command) for name, command in commands.items()}
    arms, classes = {}, None
    for name in commands:
        arms[name], classes = test_predictions(os.path.join(args.work, name))
    with open(os.path.join(args.work, "search", "run_summary.json")) as handle:
        found = json.load(handle)["search"]
    trials = pd.read_csv(os.path.join(args.work, "search", "search_trials.csv"))
    result = {"images": args.images, "image_size": args.image_size, "epochs": args.epochs, "trials": args.trials,
              "folds": args.folds, "chosen": found["chosen"], "winner_cv_score": found["winner"]["score"],
              "scored_on": found["scored_on"], **_paired(arms, classes),
              "seconds_per_trial": {"mean": round(float(trials["seconds"].mean()), 1),
                                    "each": trials["seconds"].tolist()},
              "trials_table": trials.to_dict("records"), "runs": runs,
              "commands": {k: " ".join(v) for k, v in commands.items()}}
    print(json.dumps(result, indent=2, default=str))
    with open(os.path.join(args.work, "search_result.json"), "w") as handle:
        json.dump(result, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
