"""Regression metrics from true and predicted values (pure; NumPy, SciPy and scikit-learn only).

Every number a regression run reports is computed here from ``predictions.csv`` (columns ``split``,
``true_value``, ``predicted_value``), never copied from Ludwig's training statistics. Conventions:

- ``y_true`` and ``y_pred``: numbers, shape (n,). A missing or infinite value is an error
  (ValueError naming how many): a metric silently computed on fewer rows would mislead.
- A metric that is undefined on the given rows is ``None``: R² with fewer than 2 rows or a constant
  true value (no variance to explain); Pearson and Spearman correlation with fewer than 2 rows or a
  constant true or predicted value. MAE, RMSE and the median absolute error need one row.
- Baseline: the same errors for a "model" that always predicts the median true value of the train
  split (``baseline_median``; the median minimises the mean absolute error of a constant guess). A
  model whose MAE is not clearly below ``baseline_median_mae`` has learnt nothing useful from the
  images. ``mae_gain_over_baseline`` is baseline MAE minus model MAE (positive: the model is better);
  its test interval is paired (both scored on the same resamples), so it is narrower than the two
  intervals side by side suggest. Without a train split (a saved model applied to new images) there is
  no baseline unless its median is passed in.
- Test intervals: percentile bootstrap of groups (bootstrap.py: images sharing a sample id or a
  duplicate group drawn together; each row its own group without them), 1000 resamples by a seeded
  generator (same seed, same resamples as the classification intervals); each resample is scored by
  the same rules as a split, a resample on which a metric is undefined is skipped for it, and a metric
  with fewer than 10 defined resamples gets no interval (None).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from image_learner.evaluation import bootstrap
from image_learner.evaluation.metrics import percentile_intervals

HEADLINE = ("mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error")
BASELINE = ("baseline_median_mae", "baseline_median_rmse", "mae_gain_over_baseline")


def _values(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{bad} {name} value(s) are missing or not finite")
    return array


def _weighted_metrics(true: np.ndarray, pred: np.ndarray, weights: np.ndarray, baseline: float | None = None) -> dict:
    """Every metric of each resample, NaN where undefined. ``weights`` (resamples, n): how often each
    resample holds each row (bootstrap.py); a split is the one-resample case with weight 1 per row, so
    splits and bootstrap resamples are scored by the same code. Each equals the plain formula on the
    resample's rows written out (a row drawn twice counts twice, ties rank as scipy's rankdata)."""
    total = weights.sum(axis=-1)
    drawn = weights > 0
    error = pred - true
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"mae": weights @ np.abs(error) / total, "rmse": np.sqrt(weights @ error ** 2 / total),
               "median_absolute_error": _weighted_median(np.abs(error), weights, total)}
        # constant means exactly equal drawn values (a mean of equal floats may differ from them by rounding)
        varies = _varies(true, drawn)
        spread = (weights * (true - (weights @ true / total)[:, None]) ** 2).sum(axis=-1)
        out["r2"] = np.where(varies, 1.0 - (weights @ error ** 2) / spread, np.nan)
        out["pearson_r"] = _correlation(true, pred, weights, varies & _varies(pred, drawn))
        out["spearman_r"] = _correlation(_weighted_ranks(true, weights), _weighted_ranks(pred, weights), weights,
                                         varies & _varies(pred, drawn))
        if baseline is not None:
            base_error = baseline - true
            out["baseline_median_mae"] = weights @ np.abs(base_error) / total
            out["baseline_median_rmse"] = np.sqrt(weights @ base_error ** 2 / total)
            # paired: the model and the baseline scored on the same resample
            out["mae_gain_over_baseline"] = out["baseline_median_mae"] - out["mae"]
    return out


def _varies(values: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Per resample: do the drawn rows hold at least two different values?"""
    return np.where(drawn, values, -np.inf).max(axis=-1) > np.where(drawn, values, np.inf).min(axis=-1)


def _weighted_median(values: np.ndarray, weights: np.ndarray, total: np.ndarray) -> np.ndarray:
    """np.median of each resample's rows written out: the mean of the sorted values at positions
    floor((m - 1) / 2) and floor(m / 2), m rows, found on the cumulated weights of the sorted values."""
    order = np.argsort(values, kind="stable")
    cumulated = np.cumsum(weights[:, order], axis=-1)
    middle = []
    for position in ((total - 1) // 2, total // 2):
        index = (cumulated <= position[:, None]).sum(axis=-1)  # first sorted value reaching past it
        middle.append(values[order][np.minimum(index, len(values) - 1)])
    return np.where(total > 0, (middle[0] + middle[1]) / 2, np.nan)


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample, each row's average rank (1-based, ties share the mean) among the resample's rows
    written out: the weight of smaller values plus (the weight of equal values + 1) / 2."""
    order = np.argsort(values, kind="stable")
    distinct, inverse = np.unique(values, return_inverse=True)
    last = np.searchsorted(values[order], distinct, side="right") - 1  # each distinct value's last sorted row
    up_to = np.cumsum(weights[:, order], axis=-1)[:, last]  # weight of values <= each distinct value
    equal = np.diff(up_to, axis=-1, prepend=0.0)
    return (up_to - equal + (equal + 1) / 2)[:, inverse.reshape(-1)]


def _correlation(a: np.ndarray, b: np.ndarray, weights: np.ndarray, varies: np.ndarray) -> np.ndarray:
    """Weighted Pearson's r per resample (``a``, ``b``: (n,) or (resamples, n)); NaN where not ``varies``."""
    total = weights.sum(axis=-1, keepdims=True)
    a = a - (weights * a).sum(axis=-1, keepdims=True) / total
    b = b - (weights * b).sum(axis=-1, keepdims=True) / total
    r = (weights * a * b).sum(axis=-1) / np.sqrt((weights * a ** 2).sum(axis=-1) * (weights * b ** 2).sum(axis=-1))
    return np.where(varies, np.clip(r, -1.0, 1.0), np.nan)


def split_metrics(y_true, y_pred, baseline: float | None = None) -> dict:
    """{"n", "mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error"} for one split
    (None where undefined), plus the baseline's errors when ``baseline`` (the train median) is given."""
    true, pred = _values(y_true, "true"), _values(y_pred, "predicted")
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true values but {len(pred)} predictions")
    if len(true) == 0:
        return {"n": 0}
    found = _weighted_metrics(true, pred, np.ones((1, len(true))), baseline)
    out = {"n": int(len(true))}
    for name in HEADLINE + tuple(k for k in found if k not in HEADLINE):  # the contract's order first
        value = float(found[name][0])
        out[name] = value if np.isfinite(value) else None
    if baseline is not None:  # per-row baselines (each fold's own median) have no one value to show
        out["baseline_median"] = float(baseline) if np.ndim(baseline) == 0 else None
    return out


def bootstrap_samples(y_true, y_pred, baseline: float | None = None, n_resamples: int = 1000,
                      seed: int = 42, groups=None, max_cells: int = bootstrap.MAX_CELLS) -> dict:
    """{metric: value per resample, NaN where undefined} of the cluster bootstrap (bootstrap.py: ``groups``
    drawn whole, default each row its own), a chunk of resamples at a time; equals split_metrics on each
    resample's rows (bootstrap.resample_rows)."""
    true, pred = _values(y_true, "true"), _values(y_pred, "predicted")
    names = HEADLINE + (BASELINE if baseline is not None else ())
    chunks = [_weighted_metrics(true, pred, weights.T, baseline)
              for weights in bootstrap.resample_weights(len(true), groups, n_resamples, seed, max_cells)]
    if not chunks:  # no rows: nothing to resample
        return {name: np.full(n_resamples, np.nan) for name in names}
    return {name: np.concatenate([c[name] for c in chunks]).astype(float) for name in names}


def bootstrap_ci(y_true, y_pred, baseline: float | None = None, n_resamples: int = 1000, seed: int = 42,
                 level: float = 0.95, groups=None) -> dict:
    """Percentile bootstrap intervals {metric: [low, high] or None} (rules in the module docstring)."""
    return percentile_intervals(bootstrap_samples(y_true, y_pred, baseline, n_resamples, seed, groups), level)


def train_median(predictions) -> float | None:
    """The baseline's constant: the median true value of the train split (None without one)."""
    train = predictions[predictions["split"] == "train"]
    return float(np.median(_values(train["true_value"], "true"))) if len(train) else None


def metrics_by_split(predictions, seed: int = 42, splits=("train", "validation", "test"),
                     baseline: float | None = None) -> dict:
    """metrics.json of a regression run: per split (rows of a predictions table with ``split``,
    ``true_value`` and ``predicted_value``) every metric and the median baseline; for the test split
    also seeded 95% bootstrap intervals ("ci95"). ``baseline`` defaults to the train split's median; a
    sequence gives each row of ``predictions`` its own (cross-validation: the median of the training rows of
    the fold model that scored it)."""
    baseline = train_median(predictions) if baseline is None else baseline
    if baseline is not None:
        baseline = np.broadcast_to(np.asarray(baseline, dtype=float), (len(predictions),))
    result = {}
    for name in splits:
        mask = (predictions["split"] == name).to_numpy()
        part = predictions[mask]
        if len(part):
            base = None if baseline is None else baseline[mask]
            if base is not None and len(set(base.tolist())) == 1:
                base = float(base[0])  # one baseline for the split: reported as baseline_median
            args = (part["true_value"].to_numpy(), part["predicted_value"].to_numpy(), base)
            result[name] = split_metrics(*args)
            if name == "test":  # images sharing a sample id or a duplicate group are resampled together
                groups = bootstrap.cluster_ids(part)
                result[name]["ci95"] = bootstrap_ci(*args, seed=seed, groups=groups)
                result[name]["ci95_basis"] = bootstrap.basis(part, groups)
    return result
