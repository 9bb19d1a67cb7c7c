"""Metrics per subgroup (``--subgroup-columns sex,localization,age``): which slices, and how each fares (pure).

The columns are read from the metadata CSV for evaluation only: they never reach the model (model_fit
builds Ludwig's table from the image, the label and the split alone). Each evaluated image gets a slice
per column, written to predictions.csv as ``subgroup_<column>``, so every number here can be recomputed.

Slices (one rule, stated in metrics.json):
- a column whose every non-empty value is a finite number and which has more than ``NUMERIC_MIN_DISTINCT``
  distinct values (an age, not a 0/1 code) is cut at its quartiles over all matched images (never the
  labels or predictions), equal edges merged: slices ``[low, high)``, the last closed;
- any other column: one slice per value as written (stripped);
- an empty cell: the slice ``(missing)``.

Per slice: images, groups (sample id / duplicate group, as the bootstrap draws them), and, where the slice
has at least ``MIN_SLICE_IMAGES`` images, classification's balanced accuracy, ROC-AUC (metrics.py's rules)
and ECE, or a regression's MAE, each with a 95% cluster-bootstrap interval (bootstrap.py's draws, seeded).
A slice is flagged for a metric when its whole interval is worse than the overall number on the same rows
(below for balanced accuracy and ROC-AUC, above for MAE). ECE is shown but never flagged: binned on fewer
images it is biased upward (a few images per bin cannot average out their noise), so a small slice would
look worse by construction. With many slices some flags are expected by chance: a flag says "look here",
not "proven worse".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from image_learner.errors import InputError
from image_learner.evaluation import bootstrap
from image_learner.evaluation import metrics
from image_learner.evaluation import regression_metrics

PREFIX = "subgroup_"
MISSING = "(missing)"
NUMERIC_MIN_DISTINCT = 10
MIN_SLICE_IMAGES = 10
OPTION = "--subgroup-columns"
# metric -> higher is better (None: never flagged, see the module docstring)
CLASSIFICATION = {"balanced_accuracy": True, "roc_auc": True, "expected_calibration_error": None, "coverage": True}
REGRESSION = {"mae": False, "coverage": True}


def parse_spec(spec: str | None) -> tuple[str, ...]:
    """``"sex, localization,age"`` -> the names (or 1-based indices) as written; empty: none."""
    if not spec or not spec.strip():
        return ()
    names = tuple(part.strip() for part in spec.split(","))
    if "" in names:
        raise InputError(f"{OPTION} {spec!r} has an empty column name; separate names with single commas")
    return names


def resolve_columns(raw: pd.DataFrame, names, label_column: str, image_column: str) -> tuple[str, ...]:
    """The CSV's column names for ``names`` (names or 1-based indices, input_utils.resolve_column); the
    label column (the answer itself), the image column (one slice per image) or a column named twice is an
    InputError naming the option."""
    from image_learner.data.input_utils import resolve_column

    resolved = []
    for name in names:
        column = resolve_column(raw, name, "subgroup", OPTION)
        if column == label_column:
            raise InputError(f"{OPTION}: {column!r} is the label column; a subgroup is a property of the images "
                             "(sex, site, age, ...), not the answer")
        if column == image_column:
            raise InputError(f"{OPTION}: {column!r} is the image column; every image would be a slice of its own")
        if column in resolved:
            raise InputError(f"{OPTION} names column {column!r} twice")
        resolved.append(column)
    return tuple(resolved)


def slice_labels(values) -> tuple[np.ndarray, dict]:
    """(slice per value, the rule used) by the module docstring's rule."""
    text = pd.Series(values, dtype=object).astype(str).str.strip().to_numpy()
    present = text != ""
    numbers = pd.to_numeric(pd.Series(text[present]), errors="coerce").to_numpy(float)
    numeric = (present.any() and np.isfinite(numbers).all()
               and len(np.unique(numbers)) > NUMERIC_MIN_DISTINCT)
    if not numeric:
        return np.where(present, text, MISSING), {"kind": "categorical"}
    edges = np.unique(np.quantile(numbers, [0, 0.25, 0.5, 0.75, 1]))
    bins = np.clip(np.searchsorted(edges, numbers, side="right") - 1, 0, len(edges) - 2)
    names = [f"[{edges[b]:g}, {edges[b + 1]:g}" + ("]" if b == len(edges) - 2 else ")") for b in range(len(edges) - 1)]
    labels = np.full(len(text), MISSING, dtype=object)
    labels[present] = np.asarray(names, dtype=object)[bins]
    return labels, {"kind": "numeric, quartile bins over all matched images", "edges": [float(e) for e in edges],
                    "order": names}


def attach(predictions: pd.DataFrame, table: pd.DataFrame, columns) -> tuple[pd.DataFrame, dict]:
    """``predictions`` with a ``subgroup_<column>`` slice per row (rows aligned with the prepared
    ``table``, which holds the raw values as ``subgroup_<column>``), and the rule per column."""
    rules = {}
    out = predictions.copy()
    for column in columns:
        labels, rule = slice_labels(table[PREFIX + column].to_numpy())
        out[PREFIX + column] = labels
        rules[column] = rule
    return out, rules


def weighted_ece(y_true, proba, classes, weights: np.ndarray, n_bins: int = metrics.ECE_BINS) -> np.ndarray:
    """ECE (metrics.expected_calibration_error's rule) per column of ``weights`` (rows x resamples: how often
    each row is drawn); NaN for a resample without rows."""
    y_true, proba, classes, _ = metrics._prepare(y_true, proba, classes, None)
    if len(classes) == 2:
        predicted, observed = proba[:, 1], y_true == classes[1]
    else:
        predicted, observed = proba.max(axis=1), np.asarray(classes)[proba.argmax(axis=1)] == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(predicted, edges[1:-1], right=True), 0, n_bins - 1)
    one_hot = np.zeros((n_bins, len(predicted)))
    one_hot[which, np.arange(len(predicted))] = 1.0
    gap = one_hot @ (weights * (observed - predicted)[:, None])  # bins x resamples: sum of (observed - predicted)
    total = weights.sum(axis=0)
    return np.divide(np.abs(gap).sum(axis=0), total, out=np.full(weights.shape[1], np.nan), where=total > 0)


def _classification(part: pd.DataFrame, classes, seed: int, with_ci: bool) -> tuple[dict, dict]:
    y_true, y_pred = part["true_label"].astype(str).to_numpy(), part["predicted_label"].astype(str).to_numpy()
    proba = part[[f"prob_{c}" for c in classes]].to_numpy(float)
    values = {"balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
              "roc_auc": metrics.roc_auc(y_true, proba, classes),
              "expected_calibration_error": metrics.expected_calibration_error(y_true, proba, classes)[0]}
    if not with_ci:
        return _with_coverage(part, classes, seed, values, None)
    groups = bootstrap.cluster_ids(part)
    found = metrics.bootstrap_ci(y_true, proba, classes, y_pred, ("balanced_accuracy", "roc_auc_macro"),
                                 seed=seed, groups=groups)
    ece = np.concatenate([weighted_ece(y_true, proba, classes, w)
                          for w in bootstrap.resample_weights(len(part), groups, bootstrap.N_RESAMPLES, seed)])
    intervals = {"balanced_accuracy": found["balanced_accuracy"], "roc_auc": found["roc_auc_macro"],
                 "expected_calibration_error": metrics.percentile_intervals({"ece": ece})["ece"]}
    return _with_coverage(part, classes, seed, values, intervals)


def _regression(part: pd.DataFrame, seed: int, with_ci: bool) -> tuple[dict, dict]:
    true, pred = part["true_value"].to_numpy(float), part["predicted_value"].to_numpy(float)
    values = {"mae": float(skm.mean_absolute_error(true, pred)) if len(true) else None}
    if not with_ci:
        return _with_coverage(part, None, seed, values, None)
    found = regression_metrics.bootstrap_ci(true, pred, seed=seed, groups=bootstrap.cluster_ids(part))
    return _with_coverage(part, None, seed, values, {"mae": found["mae"]})


def _with_coverage(part: pd.DataFrame, classes, seed: int, values: dict, intervals: dict | None) -> tuple[dict, dict]:
    """The slice's empirical coverage of the conformal sets (or intervals) when the rows carry them, with its
    cluster-bootstrap interval when the slice gets intervals (trust.coverage_of: the overall number's rule)."""
    from image_learner.evaluation import trust

    found = trust.coverage_of(part, classes, seed) if trust.has_sets(part) else None
    if found is not None:
        values["coverage"] = found["empirical"]
        if intervals is not None:
            intervals["coverage"] = found["ci95"]
    return values, intervals or {}


def _worse(value_ci, overall, higher_is_better: bool) -> bool:
    if value_ci is None or overall is None or higher_is_better is None:
        return False
    return value_ci[1] < overall if higher_is_better else value_ci[0] > overall


def slice_metrics(part: pd.DataFrame, task: str, classes, seed: int, overall: dict | None = None) -> dict:
    """One slice: images, groups, the metrics and (from ``MIN_SLICE_IMAGES`` images) their intervals, and
    the metrics whose interval lies wholly on the worse side of ``overall``."""
    groups = bootstrap.cluster_ids(part)
    entry = {"n_images": int(len(part)), "n_groups": int(groups.max()) + 1 if len(part) else 0}
    with_ci = len(part) >= MIN_SLICE_IMAGES
    if len(part) == 0:
        return entry
    regression = task == "regression"
    values, intervals = _regression(part, seed, with_ci) if regression else _classification(part, classes, seed, with_ci)
    entry.update(values)
    entry["ci95"] = intervals or None
    if overall is not None:
        directions = REGRESSION if regression else CLASSIFICATION
        entry["worse_than_overall"] = [name for name, higher in directions.items()
                                       if _worse(intervals.get(name), overall.get(name), higher)]
    return entry


def evaluated_rows(predictions: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows subgroups are scored on: the test split, or without one the out-of-fold predictions."""
    for split, words in (("test", "test split"), ("cross_validation", "out-of-fold predictions (no test split)")):
        part = predictions[predictions["split"] == split]
        if len(part):
            return part, words
    return predictions.iloc[:0], "no test rows"


def subgroup_report(predictions: pd.DataFrame, columns, rules: dict, task: str, classes, seed: int = 42) -> dict:
    """metrics.json's "subgroups": the overall numbers on the evaluated rows and, per column, every slice
    (in the bins' order for numbers, by size otherwise, ``(missing)`` last)."""
    part, rows = evaluated_rows(predictions)
    overall = slice_metrics(part, task, classes, seed) if len(part) else {}
    result = {"rows": rows, "overall": overall, "min_slice_images": MIN_SLICE_IMAGES,
              "numeric_min_distinct": NUMERIC_MIN_DISTINCT, "seed": seed,
              "rule": "a slice is flagged for a metric when its whole 95% interval is worse than the overall number "
                      "(below for balanced accuracy and ROC-AUC, above for MAE); ECE is never flagged, as it is biased "
                      "upward on fewer images; intervals only for slices "
                      f"of at least {MIN_SLICE_IMAGES} images", "columns": []}
    for column in columns:
        labels = part[PREFIX + column].astype(str) if len(part) else pd.Series(dtype=str)
        rule = rules.get(column, {"kind": "categorical"})
        order = [s for s in rule.get("order", []) if s in set(labels)]
        order += [s for s in labels.value_counts().index if s not in order and s != MISSING]
        order += [MISSING] if MISSING in set(labels) else []
        slices = [{"slice": s, **slice_metrics(part[labels.to_numpy() == s], task, classes, seed, overall)}
                  for s in order]
        result["columns"].append({"column": column, **rule, "slices": slices})
    return result
