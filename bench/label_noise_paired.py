#!/usr/bin/env python3
"""Label noise, paired: does removing the suspected label errors help? On the set of bench/label_noise.py
(whole lesions of nv, mel, bkl from ../shared/data/ham10000/ham10000_200x150/, a fraction of labels
flipped at random, seeded), K lesion-grouped folds from the tool's own split_utils.assign_folds; for each
fold a fixed validation part (seeded, whole lesions) of the other folds. Two arms, each one CLI run per
fold with that split as a split column (fold rows = test):

- "all": every non-test row trains. Its pooled test predictions are out-of-fold predictions; the tool's
  label_issues.label_issue_table scores them (cleanlab self_confidence; flags by find_label_issues).
- "flagged": the same, minus the rows the "all" arm flagged (removed from train and validation only; the
  test rows are the same rows in every arm).
- "top_k": the same, minus the k least plausible rows (k = the number flipped: what a user who knew the
  noise rate would remove), instead of cleanlab's flags.

Reported: AUROC of (1 - quality) for the flipped rows, precision at k = number flipped, flags; balanced
accuracy of both arms on the same pooled out-of-fold rows, against the given (noisy) labels and against the
true labels, with a paired lesion-bootstrap interval of the difference. Caveat: the flags of fold f's
training rows came from the model of the other folds, which trained on fold f's given labels.

    python bench/label_noise_paired.py [--images 400] [--flip 0.05] [--folds 2] [--epochs 4] [--image-size 96]
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import lite0_weights, run_tool  # noqa: E402
from label_noise import HAM, build  # noqa: E402

import split_utils  # noqa: E402
from image_learner.evaluation import label_issues  # noqa: E402


def fold_splits(table: pd.DataFrame, k: int, seed: int, validation_share: float = 0.15) -> list[pd.Series]:
    """Per fold: a split column (test = the fold, validation = a seeded share of the other folds' lesions)."""
    folds = split_utils.assign_folds(table["label"], table["lesion_id"], k=k, seed=seed)
    rng = np.random.default_rng(seed)
    splits = []
    for fold in range(1, k + 1):
        lesions = table.loc[folds != fold, "lesion_id"].unique()
        chosen = set(rng.choice(lesions, int(round(validation_share * len(lesions))), replace=False))
        split = np.where(folds == fold, "test", np.where(table["lesion_id"].isin(chosen), "validation", "train"))
        splits.append(pd.Series(split, index=table.index))
    return splits


def run_arm(name: str, table: pd.DataFrame, splits, drop: set, zip_path: str, work: str, args) -> pd.DataFrame:
    """One CLI run per fold; the pooled test rows of predictions.csv (the out-of-fold predictions)."""
    pooled = []
    for fold, split in enumerate(splits, 1):
        rows = table.assign(split=split)
        rows = rows[(rows["split"] == "test") | ~rows["image_path"].isin(drop)]
        csv = os.path.join(work, f"{name}_fold{fold}.csv")
        rows.drop(columns=["true_label"]).to_csv(csv, index=False)
        out = os.path.join(work, f"{name}_fold{fold}")
        if not (args.reuse and os.path.exists(os.path.join(out, "predictions.csv"))):
            run_tool(csv, zip_path, out, "--model-name", "tf_efficientnet_lite0", "--pretrained-weights",
                     lite0_weights(), "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                     "--early-stop", "0", "--split-column", "split", "--sample-id-column", "lesion_id",
                     "--random-seed", str(args.seed), "--preprocessing-workers", "1", "--no-audit")
        predictions = pd.read_csv(os.path.join(out, "predictions.csv"), keep_default_na=False, dtype={"image": str})
        pooled.append(predictions[predictions["split"] == "test"].assign(fold=fold))
    return pd.concat(pooled, ignore_index=True)


def paired_difference(truth, first, second, groups, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% lesion-bootstrap interval of balanced accuracy (second - first) on the same rows."""
    rng = np.random.default_rng(seed)
    codes, unique = pd.factorize(groups)
    members = [np.flatnonzero(codes == g) for g in range(len(unique))]
    diffs = []
    for _ in range(draws):
        take = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        diffs.append(balanced_accuracy_score(truth[take], second[take])
                     - balanced_accuracy_score(truth[take], first[take]))
    return [round(float(q), 3) for q in np.percentile(diffs, [2.5, 97.5])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--classes", default="nv,mel,bkl")
    parser.add_argument("--keep", default=None, help="write the runs here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="keep the fold runs already in --keep")
    args = parser.parse_args()
    started = time.time()
    work = args.keep or tempfile.mkdtemp()
    csv, zip_path, flipped = build(work, args.images, args.flip, args.seed, args.classes.split(","))
    table = pd.read_csv(csv, keep_default_na=False, dtype=str)
    meta = pd.read_csv(os.path.join(HAM, "metadata.csv"))
    truth = dict(zip(meta["image_path"].map(os.path.basename), meta["dx"]))
    table["true_label"] = table["image_path"].map(truth)
    assert (table["true_label"] != table["label"]).sum() == len(flipped)
    splits = fold_splits(table, args.folds, args.seed)

    everything = run_arm("all", table, splits, set(), zip_path, work, args)
    classes = sorted(table["label"].unique())
    issues, facts = label_issues.label_issue_table(everything.assign(split="cross_validation"), classes)
    is_flip = issues["image"].isin(flipped)
    k = int(is_flip.sum())
    removed = {"flagged": set(issues.loc[issues["flagged"], "image"]), "top_k": set(issues["image"].head(k))}
    given, true = table["label"].to_numpy(), table["true_label"].to_numpy()
    base = everything.set_index("image").loc[table["image_path"], "predicted_label"].to_numpy()
    result = {
        "images": len(table), "flipped": len(flipped), "folds": args.folds, "basis": facts["basis"],
        "auroc": round(float(roc_auc_score(is_flip, 1 - issues["quality_score"])), 3),
        "precision_at_k": round(float(is_flip.head(k).mean()), 3), "k": k,
        "flagged": len(removed["flagged"]), "flips_flagged": int((issues["flagged"] & is_flip).sum()),
        "flag_rule": facts["flag_rule"],
        "balanced_accuracy_all": {"vs_given": round(balanced_accuracy_score(given, base), 3),
                                  "vs_true": round(balanced_accuracy_score(true, base), 3)}}
    for arm, drop in removed.items():
        cleaned = run_arm(arm, table, splits, drop, zip_path, work, args)
        other = cleaned.set_index("image").loc[table["image_path"], "predicted_label"].to_numpy()
        result[f"arm_{arm}"] = {
            "removed_from_training_per_fold": [int(((s != "test") & table["image_path"].isin(drop)).sum())
                                               for s in splits],
            "flips_among_removed": len(drop & flipped),
            "balanced_accuracy_vs_given": round(balanced_accuracy_score(given, other), 3),
            "difference_vs_given_95ci": paired_difference(given, base, other, table["lesion_id"]),
            "balanced_accuracy_vs_true": round(balanced_accuracy_score(true, other), 3),
            "difference_vs_true_95ci": paired_difference(true, base, other, table["lesion_id"])}
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
