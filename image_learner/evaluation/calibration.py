"""Temperature scaling of class probabilities (pure; no Ludwig).

One scalar T divides every row's logits: p' = softmax(log(p) / T). It is fitted by minimising the negative
log-likelihood on the calibration rows (the validation split, or the pooled out-of-fold predictions of a
cross-validation), never on test rows. Dividing all logits of a row by the same T > 0 keeps their order,
so the arg-max class, and with it accuracy, is unchanged by construction; a binary task's P(positive) is
a monotone function of the raw one, so its ROC curve is unchanged too.

Why not Ludwig's ``calibration: true``: Ludwig 0.17.10 fits its temperature inside ``train`` on the
validation set it is given, so the final model of a cross-validation (trained without validation rows)
would get none, and the fold models' pooled out-of-fold rows could not be used. A fit of one scalar on
the probabilities we already compute is small, and the temperature lives in our manifest, checked on load.
"""

from __future__ import annotations

import math

import numpy as np

# Bounds of the fit and of a manifest's temperature: below 0.05 or above 20 the probabilities become 0/1
# or uniform to float precision, which no sensible fit reaches on real validation rows.
TEMPERATURE_RANGE = (0.05, 20.0)
_EPS = 1e-12


def log_probabilities(proba) -> np.ndarray:
    """log(p), with p clipped to [1e-12, 1] so a saturated probability stays a finite logit."""
    return np.log(np.clip(np.asarray(proba, dtype=float), _EPS, 1.0))


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row by row; T = 1 returns the (renormalised) probabilities."""
    logits = log_probabilities(proba) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(proba, true_index) -> float:
    """Mean -log p(true class) (natural log), p clipped to 1e-12 as log_loss clips."""
    true_index = np.asarray(true_index, dtype=np.int64)
    if len(true_index) == 0:
        return float("nan")
    return float(-log_probabilities(proba)[np.arange(len(true_index)), true_index].mean())


def fit_temperature(proba, true_index) -> float:
    """The T in TEMPERATURE_RANGE minimising the mean NLL of softmax(log(p) / T) on these rows
    (``true_index``: each row's class column). A bounded search on log T; 1.0 without rows."""
    from scipy.optimize import minimize_scalar

    true_index = np.asarray(true_index, dtype=np.int64)
    if len(true_index) == 0:
        return 1.0
    logits = log_probabilities(proba)
    rows = np.arange(len(true_index))

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z_max = z.max(axis=1)
        log_norm = z_max + np.log(np.exp(z - z_max[:, None]).sum(axis=1))
        return float((log_norm - z[rows, true_index]).mean())

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    # the bounded search never evaluates the end points exactly: keep T = 1 when it is no worse
    best = float(found.x) if nll(float(found.x)) < nll(0.0) else 0.0
    return float(min(max(math.exp(best), TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]))


def class_index(labels, classes) -> np.ndarray:
    """Each label's column in ``classes`` (labels outside them: ValueError)."""
    lookup = {c: k for k, c in enumerate(classes)}
    labels = [str(v) for v in labels]
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise ValueError(f"labels outside the classes: {unknown[:5]}")
    return np.array([lookup[v] for v in labels], dtype=np.int64)


def before_after(y_true, raw, calibrated, classes) -> dict:
    """The effect of calibration on some rows: ECE (metrics' rule) and log loss before and after, and
    the share of rows whose arg-max class is unchanged (1.0 by construction)."""
    from image_learner.evaluation import metrics

    if len(y_true) == 0:
        return {"rows": 0}
    index = class_index(y_true, classes)
    return {"rows": int(len(index)),
            "ece_before": metrics.expected_calibration_error(y_true, raw, classes)[0],
            "ece_after": metrics.expected_calibration_error(y_true, calibrated, classes)[0],
            "log_loss_before": negative_log_likelihood(raw, index),
            "log_loss_after": negative_log_likelihood(calibrated, index),
            "argmax_unchanged": float(np.mean(np.asarray(raw).argmax(1) == np.asarray(calibrated).argmax(1)))}
