"""Split-conformal prediction sets and intervals, and the risk-coverage curve (pure; no Ludwig).

Classification, adaptive prediction sets (APS, Romano et al. 2020) without randomisation: a class's
score is the probability mass of the classes ranked at or above it, except the most probable class,
whose score is 0 (so no set is empty). The quantile q of the calibration rows' true-class scores, at
level ceil((n + 1) * coverage) / n, gives every image the set {classes with score <= q}: an image whose
probability is spread over several classes gets a larger set. Exchangeable calibration and test rows
then give P(true class in set) >= coverage. Regression: the same quantile of absolute residuals gives
the interval prediction +/- q.

Why no library: MAPIE 1.6.0, crepes 0.9.1 and puncc 0.9.3 are on PyPI (pip download), and they would fit:
MAPIE through a prefit estimator wrapped for scikit-learn, crepes from precomputed scores. But the quantile
must live in our manifest (validated on load) and predict must apply the same rule without refitting, so
we would keep only their quantile line while adding a dependency to the wheel, the container and the Galaxy
requirements; the rule above is a few lines with a test of its coverage (tests/test_trust.py).
"""

from __future__ import annotations

import json
import math

import numpy as np

SET_SEPARATOR = "|"


def class_scores(proba) -> np.ndarray:
    """(rows, classes) APS scores: the summed probability of the classes ranked at or above each class
    (ties in class order), 0 for the top class."""
    proba = np.asarray(proba, dtype=float)
    order = np.argsort(-proba, axis=1, kind="stable")
    ranked = np.take_along_axis(proba, order, axis=1)
    mass = np.minimum(np.cumsum(ranked, axis=1), 1.0)  # rounding must not push the last class past q = 1
    mass[:, 0] = 0.0
    scores = np.empty_like(mass)
    np.put_along_axis(scores, order, mass, axis=1)
    return scores


def conformal_quantile(scores, coverage: float) -> float | None:
    """The split-conformal quantile: the ceil((n + 1) * coverage)-th smallest score; None when there
    are too few rows for that coverage (the rank exceeds n)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    n = len(scores)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if n == 0 or rank > n:
        return None
    return float(scores[max(rank, 1) - 1])


def minimum_rows(coverage: float) -> int:
    """The fewest calibration rows for which ``coverage`` has a finite quantile."""
    return max(1, math.ceil(coverage / (1 - coverage) - 1e-9))


def prediction_sets(proba, quantile: float) -> np.ndarray:
    """(rows, classes) booleans: class in the image's set."""
    return class_scores(proba) <= quantile


def true_class_scores(proba, true_index) -> np.ndarray:
    true_index = np.asarray(true_index, dtype=np.int64)
    return class_scores(proba)[np.arange(len(true_index)), true_index]


def set_labels(members, proba, classes) -> list[str]:
    """Each set as text, most probable class first, joined by "|" (JSON list when a class name holds "|")."""
    as_json = any(SET_SEPARATOR in c for c in classes)
    names = np.asarray(classes, dtype=object)
    out = []
    for row, p in zip(np.asarray(members), np.asarray(proba)):
        chosen = [names[k] for k in np.argsort(-p, kind="stable") if row[k]]
        out.append(json.dumps(chosen) if as_json else SET_SEPARATOR.join(chosen))
    return out


def intervals(predicted, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted, dtype=float)
    return predicted - quantile, predicted + quantile


def risk_coverage(confidence, correct, points: int = 50) -> list[dict]:
    """The risk-coverage curve: keep the ``k`` most confident rows (ties broken by row order) and give the
    error rate among them, for ``points`` kept shares from 1/points to 1."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    n = len(correct)
    if n == 0:
        return []
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    curve = []
    for share in np.linspace(1 / points, 1, points):
        k = max(1, int(round(share * n)))
        curve.append({"coverage": k / n, "kept": k, "error_rate": float(errors[k - 1] / k)})
    return curve


def kept_rows(confidence, share: float) -> np.ndarray:
    """Booleans: the ``share`` most confident rows (at least one), as risk_coverage keeps them."""
    confidence = np.asarray(confidence, dtype=float)
    k = max(1, int(round(share * len(confidence))))
    keep = np.zeros(len(confidence), dtype=bool)
    keep[np.argsort(-confidence, kind="stable")[:k]] = True
    return keep
