"""Suspected label errors (confident learning, cleanlab) from predictions.csv, as label_issues.csv.

Only probabilities the model did not fit are scored: the out-of-fold rows of a cross-validation
(split ``cross_validation``), else the held-out rows of a single split (validation and test). Train rows
are never scored: their probabilities were fitted to their given labels, so a wrong label there looks
plausible. Nothing is relabelled; the table ranks images for a person to look at.

The score is cleanlab's ``self_confidence`` (the probability of the given label): it needs no class
priors, so it means the same on a few dozen held-out rows as on thousands, and it is the number the
report shows beside each thumbnail. ``flagged`` is cleanlab's ``find_label_issues`` (prune by noise rate)
where it can run (every class scored at least MIN_PER_CLASS times), else the images whose given label is
less probable than the predicted one by the model's own threshold rule (``predicted != given``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORED_SPLITS_CV = ("cross_validation",)
SCORED_SPLITS_HELD_OUT = ("validation", "test")
METHOD = "self_confidence"
MIN_PER_CLASS = 5  # cleanlab's noise-rate estimate needs a few examples of every class
COLUMNS = ["image", "split", "given_label", "predicted_label", "given_label_probability", "quality_score",
           "flagged", "rank"]


def scored_rows(predictions: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(rows, basis): the rows whose probabilities the model did not fit, and what they are in words."""
    split = predictions["split"].astype(str)
    if split.isin(SCORED_SPLITS_CV).any():
        return predictions[split.isin(SCORED_SPLITS_CV)], "out-of-fold predictions (cross-validation)"
    return (predictions[split.isin(SCORED_SPLITS_HELD_OUT)],
            "held-out predictions (validation and test rows; train rows are never scored)")


def quality_scores(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """cleanlab's label quality (``self_confidence``) per row: low = the given label is implausible."""
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probabilities, method=METHOD)


def flag_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, str]:
    """(flags, rule): cleanlab's find_label_issues where every class has MIN_PER_CLASS scored rows, else
    the rows the model predicts as another class (argmax != given)."""
    counts = np.bincount(labels, minlength=probabilities.shape[1])
    if counts.min() >= MIN_PER_CLASS:
        from cleanlab.filter import find_label_issues

        return (np.asarray(find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate",
                                                  n_jobs=1)),
                "cleanlab find_label_issues (prune_by_noise_rate)")
    return (probabilities.argmax(axis=1) != labels,
            f"most probable class differs from the given label (a class had under {MIN_PER_CLASS} scored rows)")


def label_issue_table(predictions: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, dict]:
    """(table, facts): one row per scored image, least plausible given label first (COLUMNS), and what it
    was computed on (basis, rows, flagged count, method, flag rule). An empty table when nothing is
    scorable (facts["reason"] says why)."""
    rows, basis = scored_rows(predictions)
    facts = {"basis": basis, "method": METHOD, "rows": int(len(rows)), "flagged": 0, "flag_rule": None}
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS), {**facts, "reason": "there are no held-out or out-of-fold rows"}
    probabilities = rows[[f"prob_{c}" for c in classes]].to_numpy(float)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # cleanlab wants rows summing to 1
    index = {c: k for k, c in enumerate(classes)}
    labels = rows["true_label"].astype(str).map(index).to_numpy()
    scores = quality_scores(labels, probabilities)
    flags, rule = flag_issues(labels, probabilities)
    table = pd.DataFrame({"image": rows["image"].to_numpy(), "split": rows["split"].to_numpy(),
                          "given_label": rows["true_label"].astype(str).to_numpy(),
                          "predicted_label": rows["predicted_label"].astype(str).to_numpy(),
                          "given_label_probability": probabilities[np.arange(len(labels)), labels],
                          "quality_score": scores, "flagged": flags.astype(bool)})
    table = table.sort_values(["quality_score", "image"], kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table, {**facts, "flagged": int(table["flagged"].sum()), "flag_rule": rule, "reason": None}
