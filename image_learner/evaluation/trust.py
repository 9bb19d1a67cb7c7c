"""How far to trust each prediction: the manifest's ``trust`` record, its columns, and metrics.json's
``trust`` entry (pure; no Ludwig).

Fitted on the calibration rows only (the validation split, or a cross-validation's pooled out-of-fold
predictions), in this order: the temperature (calibration.py) on the raw probabilities, then the
conformal quantile (conformal.py) on the temperature-scaled ones, which are the ``prob_<class>`` columns
of predictions.csv and what every metric uses. The raw probabilities are softmax(T * log p') and are
recomputed from the columns when the report shows "before calibration".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from image_learner.evaluation import bootstrap
from image_learner.evaluation import calibration
from image_learner.evaluation import conformal
from image_learner.evaluation import metrics

DEFAULT_COVERAGE = 0.9
RISK_SHARE = 0.8  # the kept share whose balanced accuracy is compared with all rows


def check_coverage(coverage, option: str = "--coverage") -> float:
    """0 (off) or a share strictly between 0 and 1; anything else is a ValueError naming the option."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a number, got {coverage!r}") from None
    if value != 0 and not 0 < value < 1:
        raise ValueError(f"{option} must be 0 (off) or between 0 and 1 (e.g. 0.9), got {coverage!r}")
    return value


def calibrate(task: str, classes, labels, raw, calibration_rows) -> tuple[float | None, np.ndarray]:
    """(temperature, scaled probabilities of every row): T fitted on ``calibration_rows`` (booleans) of
    ``raw``; a regression has none (None, outputs as they are)."""
    if task == "regression":
        return None, raw
    rows = np.asarray(calibration_rows, dtype=bool)
    index = calibration.class_index(np.asarray(labels)[rows], classes)
    temperature = calibration.fit_temperature(np.asarray(raw)[rows], index)
    return temperature, calibration.apply_temperature(raw, temperature)


def scaled_threshold(threshold: float | None, temperature: float | None) -> float | None:
    """A threshold on raw P(positive) as the same cut on the scaled probability (monotone, so the same rows)."""
    if threshold is None or temperature is None:
        return threshold
    return float(calibration.apply_temperature(np.array([[1 - threshold, threshold]]), temperature)[0, 1])


def fit_record(task: str, classes, labels, outputs, calibration_rows, coverage: float,
               temperature: float | None, calibrated_on: str) -> tuple[dict, str | None]:
    """(the manifest's ``trust`` record, a warning or None). ``outputs``: scaled probabilities, or a
    regression's predicted values; ``labels``: true classes or values."""
    rows = np.asarray(calibration_rows, dtype=bool)
    n = int(rows.sum())
    record = {"temperature": temperature, "calibrated_on": calibrated_on, "calibration_rows": n,
              "coverage": None, "conformal_score": None, "conformal_quantile": None}
    if not coverage:
        return record, None
    if task == "regression":
        scores = np.abs(np.asarray(labels, dtype=float)[rows] - np.asarray(outputs, dtype=float)[rows])
        score = "absolute_residual"
    else:
        scores = conformal.true_class_scores(np.asarray(outputs)[rows],
                                             calibration.class_index(np.asarray(labels)[rows], classes))
        score = "aps"
    quantile = conformal.conformal_quantile(scores, coverage)
    if quantile is None:
        return record, (f"--coverage {coverage:g} needs at least {conformal.minimum_rows(coverage)} calibration "
                        f"rows ({calibrated_on}); there are {n}: no prediction sets or intervals")
    return {**record, "coverage": float(coverage), "conformal_score": score, "conformal_quantile": quantile}, None


def add_columns(table: pd.DataFrame, task: str, classes, outputs, record: dict | None) -> pd.DataFrame:
    """``prediction_set`` and ``set_size`` (classes), or ``interval_low`` and ``interval_high``
    (regression), from the record's quantile; the table unchanged without one."""
    quantile = (record or {}).get("conformal_quantile")
    if quantile is None:
        return table
    table = table.copy()
    if task == "regression":
        table["interval_low"], table["interval_high"] = conformal.intervals(outputs, quantile)
        return table
    members = conformal.prediction_sets(outputs, quantile)
    table["prediction_set"] = conformal.set_labels(members, outputs, classes)
    table["set_size"] = members.sum(axis=1)
    return table


def _coverage_interval(covered: np.ndarray, part: pd.DataFrame, seed: int) -> dict:
    """Empirical coverage and its cluster-bootstrap 95% interval (the share covered in each resample,
    groups drawn whole)."""
    groups = bootstrap.cluster_ids(part)
    samples = bootstrap.mean_samples(covered, groups, seed=seed)
    ci = metrics.percentile_intervals({"coverage": samples})["coverage"]
    return {"empirical": float(covered.mean()), "ci95": ci, "ci95_basis": bootstrap.basis(part, groups)}


def has_sets(part: pd.DataFrame) -> bool:
    """Whether the rows carry conformal prediction sets (classes) or intervals (a regression)."""
    return "prediction_set" in part or "interval_low" in part


def coverage_of(part: pd.DataFrame, classes, seed: int = 42) -> dict:
    """The share of ``part``'s rows whose true label lies in its prediction set (``classes`` given) or whose
    true value lies in its interval, with its cluster-bootstrap 95% interval."""
    if "interval_low" in part:
        covered = ((part["true_value"] >= part["interval_low"]) & (part["true_value"] <= part["interval_high"]))
        return _coverage_interval(covered.to_numpy(), part, seed)
    y_true = part["true_label"].astype(str).to_numpy()
    covered = np.array([t in m for t, m in zip(y_true, _members(part, classes))], dtype=bool)
    return _coverage_interval(covered, part, seed)


def _members(part: pd.DataFrame, classes) -> list[set]:
    import json

    sets = part["prediction_set"].astype(str)
    if any(conformal.SET_SEPARATOR in c for c in classes):
        return [set(json.loads(s)) for s in sets]
    return [set(s.split(conformal.SET_SEPARATOR)) if s else set() for s in sets]


def summary(predictions: pd.DataFrame, task: str, classes, record: dict | None, seed: int = 42,
            split: str = "test") -> dict:
    """metrics.json's ``trust`` entry for the ``split`` rows: what was fitted on which rows, calibration
    before/after, the prediction sets' (or intervals') empirical coverage with its interval, mean set size
    per class and the set-size histogram, and the risk-coverage curve."""
    record = record or {}
    part = predictions[predictions["split"] == split] if "split" in predictions else predictions
    out = {"evaluated_on": f"{split} rows ({len(part)})", **record}
    if not len(part):
        return out
    temperature = record.get("temperature")
    if task == "regression":
        if "interval_low" in part:
            covered = ((part["true_value"] >= part["interval_low"]) & (part["true_value"] <= part["interval_high"]))
            out["coverage_test"] = {**_coverage_interval(covered.to_numpy(), part, seed),
                                    "mean_width": float((part["interval_high"] - part["interval_low"]).mean())}
        return out
    proba = part[[f"prob_{c}" for c in classes]].to_numpy(float)
    y_true = part["true_label"].astype(str).to_numpy()
    if temperature is not None:
        raw = calibration.apply_temperature(proba, 1.0 / temperature)  # softmax(T log p'): the model's own
        out["calibration_test"] = calibration.before_after(y_true, raw, proba, classes)
    if "prediction_set" in part:
        members = _members(part, classes)
        covered = np.array([t in m for t, m in zip(y_true, members)])
        sizes = part["set_size"].to_numpy(int)
        out["coverage_test"] = {**_coverage_interval(covered, part, seed), "mean_set_size": float(sizes.mean()),
                                "mean_set_size_per_class": {c: float(sizes[y_true == c].mean())
                                                            for c in classes if (y_true == c).any()},
                                "set_size_histogram": {int(k): int((sizes == k).sum())
                                                       for k in range(1, len(classes) + 1)}}
    out["risk_coverage"] = _risk(part, proba, y_true, classes)
    return out


def _risk(part, proba, y_true, classes) -> dict:
    """Error rate as the least confident rows are set aside; confidence is the probability of the
    predicted label (binary: possibly under 0.5 with a low threshold)."""
    y_pred = part["predicted_label"].astype(str).to_numpy()
    column = {c: k for k, c in enumerate(classes)}
    confidence = np.array([proba[i, column[p]] if p in column else 0.0 for i, p in enumerate(y_pred)])
    keep = conformal.kept_rows(confidence, RISK_SHARE)

    def balanced(rows):
        return metrics.split_metrics(y_true[rows], proba[rows], classes, y_pred[rows]).get("balanced_accuracy")

    return {"confidence": "probability of the predicted label",
            "curve": conformal.risk_coverage(confidence, y_pred == y_true),
            "balanced_accuracy_all": balanced(np.ones(len(y_true), dtype=bool)),
            f"balanced_accuracy_at_{int(RISK_SHARE * 100)}": balanced(keep)}


def check_record(record, task: str, n_classes: int, target_limit: float) -> str | None:
    """What is wrong with a manifest's ``trust`` record (None: nothing). The temperature within
    calibration.TEMPERATURE_RANGE (classes) or null (regression); coverage null or a valid --coverage
    with its quantile in [0, 1] (APS) or [0, target_limit] (residual) and the matching score name."""
    fields = {"temperature", "calibrated_on", "calibration_rows", "coverage", "conformal_score", "conformal_quantile"}
    if not isinstance(record, dict) or set(record) != fields:
        return "an object with " + ", ".join(sorted(fields))
    low, high = calibration.TEMPERATURE_RANGE
    t = record["temperature"]
    if task == "regression":
        if t is not None:
            return "temperature null for a regression model"
    elif not (_finite(t) and low <= t <= high):
        return f"temperature a number from {low} to {high}"
    if record["calibrated_on"] not in ("validation split", "pooled out-of-fold predictions"):
        return "calibrated_on 'validation split' or 'pooled out-of-fold predictions'"
    if not (isinstance(record["calibration_rows"], int) and not isinstance(record["calibration_rows"], bool)
            and record["calibration_rows"] >= 0):
        return "calibration_rows a count"
    coverage, score, quantile = record["coverage"], record["conformal_score"], record["conformal_quantile"]
    if coverage is None:
        return None if score is None and quantile is None else "conformal_score and conformal_quantile null"
    if not _finite(coverage) or not 0 < coverage < 1:
        return "coverage null or between 0 and 1"
    if score != ("absolute_residual" if task == "regression" else "aps"):
        return "conformal_score 'absolute_residual' (regression) or 'aps' (classes)"
    top = target_limit if task == "regression" else 1.0
    if not (_finite(quantile) and 0 <= quantile <= top):
        return f"conformal_quantile a number from 0 to {top:g}"
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
