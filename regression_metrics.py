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
- Test intervals: percentile bootstrap, rows resampled with replacement 1000 times by a seeded
  generator (``metrics.resample_rows``: same seed, same resamples as the classification intervals);
  each resample is scored by the same rules as a split, a resample on which a metric is undefined is
  skipped for it, and a metric with fewer than 10 defined resamples gets no interval (None).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from metrics import percentile_intervals, resample_rows

HEADLINE = ("mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error")
BASELINE = ("baseline_median_mae", "baseline_median_rmse", "mae_gain_over_baseline")


def _values(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{bad} {name} value(s) are missing or not finite")
    return array


def _batch_metrics(true: np.ndarray, pred: np.ndarray, baseline: float | None = None) -> dict:
    """Every metric along the last axis of (resamples, n) arrays, NaN where undefined; a split is
    the one-resample case, so splits and bootstrap resamples are scored by the same code."""
    n = true.shape[-1]
    error = pred - true
    out = {"mae": np.abs(error).mean(axis=-1), "rmse": np.sqrt((error ** 2).mean(axis=-1)),
           "median_absolute_error": np.median(np.abs(error), axis=-1)}
    centred = true - true.mean(axis=-1, keepdims=True)
    total = (centred ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # constant means exactly equal values (the mean of n equal floats may differ from them by rounding)
        varies = np.ptp(true, axis=-1) > 0
        out["r2"] = np.where(varies & (n >= 2), 1.0 - (error ** 2).sum(axis=-1) / total, np.nan)
        out["pearson_r"] = _correlation(true, pred)
        out["spearman_r"] = _correlation(stats.rankdata(true, axis=-1), stats.rankdata(pred, axis=-1))
    if baseline is not None:
        base_error = baseline - true
        out["baseline_median_mae"] = np.abs(base_error).mean(axis=-1)
        out["baseline_median_rmse"] = np.sqrt((base_error ** 2).mean(axis=-1))
        out["mae_gain_over_baseline"] = out["baseline_median_mae"] - out["mae"]
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r along the last axis; NaN where either side is constant (or fewer than 2 rows)."""
    varies = (np.ptp(a, axis=-1) > 0) & (np.ptp(b, axis=-1) > 0)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    r = (a * b).sum(axis=-1) / np.sqrt((a ** 2).sum(axis=-1) * (b ** 2).sum(axis=-1))
    return np.where(varies, np.clip(r, -1.0, 1.0), np.nan)


def split_metrics(y_true, y_pred, baseline: float | None = None) -> dict:
    """{"n", "mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error"} for one split
    (None where undefined), plus the baseline's errors when ``baseline`` (the train median) is given."""
    true, pred = _values(y_true, "true"), _values(y_pred, "predicted")
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true values but {len(pred)} predictions")
    if len(true) == 0:
        return {"n": 0}
    found = _batch_metrics(true[None], pred[None], baseline)
    out = {"n": int(len(true))}
    for name in HEADLINE + tuple(k for k in found if k not in HEADLINE):  # the contract's order first
        value = float(found[name][0])
        out[name] = value if np.isfinite(value) else None
    if baseline is not None:  # per-row baselines (each fold's own median) have no one value to show
        out["baseline_median"] = float(baseline) if np.ndim(baseline) == 0 else None
    return out


def bootstrap_samples(y_true, y_pred, baseline: float | None = None, n_resamples: int = 1000,
                      seed: int = 42) -> tuple[np.ndarray, dict]:
    """(resample row indices, {metric: value per resample, NaN where undefined}), all resamples at
    once as (resamples, n) arrays; equals split_metrics on each resample."""
    true, pred = _values(y_true, "true"), _values(y_pred, "predicted")
    rows = resample_rows(len(true), n_resamples, seed)
    if len(true) == 0:
        names = HEADLINE + (BASELINE if baseline is not None else ())
        return rows, {name: np.full(n_resamples, np.nan) for name in names}
    base = baseline if baseline is None or np.ndim(baseline) == 0 else np.asarray(baseline, dtype=float)[rows]
    return rows, {name: values.astype(float) for name, values in
                  _batch_metrics(true[rows], pred[rows], base).items()}


def bootstrap_ci(y_true, y_pred, baseline: float | None = None, n_resamples: int = 1000, seed: int = 42,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals {metric: [low, high] or None} (rules in the module docstring)."""
    return percentile_intervals(bootstrap_samples(y_true, y_pred, baseline, n_resamples, seed)[1], level)


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
            if name == "test":
                result[name]["ci95"] = bootstrap_ci(*args, seed=seed)
    return result
