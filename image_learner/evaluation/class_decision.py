"""The multiclass decision (``--class-decision``): the plain argmax, or one moved towards the rare classes,
tuned on the validation rows for balanced accuracy (pure).

A multiclass model trained on skewed classes (HAM10000: two thirds one class) can rank well and still decide
for the majority class. ``balanced`` is post-hoc logit adjustment (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021): predict argmax_k log p_k - alpha * log pi_k, with pi the train split's class
frequencies; alpha 0 is the argmax, 1 divides the probabilities by the priors. Alpha is the ALPHAS value with the
highest balanced accuracy on the validation rows (the smallest on a tie, so the argmax when nothing helps), the
way a binary task's threshold is tuned there (metrics.choose_threshold): never on test rows. With
cross-validation, as the threshold: each fold's alpha on its validation part (its out-of-fold labels), the
delivered model's on the pooled out-of-fold rows. It trades accuracy
for balanced accuracy (BENCHMARKS.md, "A balanced decision rule"); the probabilities, ROC-AUC, calibration and
prediction sets do not change, only the predicted label. The model records the per-class offsets
(alpha * log pi) and predict subtracts the same ones.
"""

from __future__ import annotations

import math

import numpy as np

RULES = ("argmax", "balanced")
DEFAULT_RULE = "argmax"
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
OFFSET_LIMIT = 50.0  # |alpha * log pi| for a class of 1 in e^50 rows: far beyond any real training set


def log_priors(train_labels, classes: list[str]) -> np.ndarray:
    """log of each class's share of the training rows (in ``classes`` order; a class with no row counts as one,
    so the log stays finite)."""
    labels = np.asarray(train_labels).astype(str)
    counts = np.array([max(int(np.sum(labels == c)), 1) for c in classes], dtype=float)
    return np.log(counts / counts.sum())


def decide(proba: np.ndarray, offsets) -> np.ndarray:
    """Class indices: argmax of log p - offsets (None or all zeros: the plain argmax, ties to the first class)."""
    proba = np.asarray(proba, dtype=float)
    if offsets is None:
        return proba.argmax(axis=1)
    return (np.log(np.clip(proba, 1e-300, None)) - np.asarray(offsets, dtype=float)).argmax(axis=1)


def balanced_accuracy(true_index: np.ndarray, predicted_index: np.ndarray) -> float:
    """Mean recall over the classes present in ``true_index`` (scikit-learn's balanced_accuracy_score)."""
    recalls = [np.mean(predicted_index[true_index == c] == c) for c in np.unique(true_index)]
    return float(np.mean(recalls)) if recalls else math.nan


def choose(labels, proba: np.ndarray, classes: list[str], train_labels, chosen_on: str = "validation rows") -> dict:
    """The balanced decision fitted on these rows (meant for the validation split; ``chosen_on`` names them):
    alpha, the offsets to record, the rows' balanced accuracy and accuracy with the argmax and with the chosen
    alpha, and ``curve``: both for every alpha tried (the trade the choice made, for the report)."""
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index[str(v)] for v in labels], dtype=int)
    priors = log_priors(train_labels, classes)
    decided = [decide(proba, a * priors) for a in ALPHAS] if len(true) else []
    curve = [{"alpha": a, "balanced_accuracy": balanced_accuracy(true, d), "accuracy": float(np.mean(d == true))}
             for a, d in zip(ALPHAS, decided)]
    scores = np.array([point["balanced_accuracy"] for point in curve])
    chosen = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0]) if curve else 0  # the smallest on a tie
    none = {"balanced_accuracy": math.nan, "accuracy": math.nan}  # no rows: nothing measured
    argmax, best = (curve[0], curve[chosen]) if curve else (none, none)
    return {"rule": "balanced", "alpha": ALPHAS[chosen], "offsets": (ALPHAS[chosen] * priors).tolist(),
            "rows": int(len(true)), "chosen_on": chosen_on,
            "balanced_accuracy_argmax": argmax["balanced_accuracy"],
            "balanced_accuracy_chosen": best["balanced_accuracy"],
            "accuracy_argmax": argmax["accuracy"], "accuracy_chosen": best["accuracy"], "curve": curve}


def describe(record: dict | None) -> str:
    """One log/report line."""
    if not record:
        return "decision: the most probable class (argmax)"
    return (f"decision: balanced (logit adjustment), alpha {record['alpha']:g} chosen on the {record['rows']} "
            f"{record['chosen_on']} for balanced accuracy ({record['balanced_accuracy_argmax']:.3f} with the "
            f"argmax -> {record['balanced_accuracy_chosen']:.3f}; accuracy {record['accuracy_argmax']:.3f} -> "
            f"{record['accuracy_chosen']:.3f})")


def check_offsets(value, n_classes: int) -> bool:
    """A model file's offsets as training writes them: one finite number per class, |x| <= OFFSET_LIMIT."""
    return (isinstance(value, list) and len(value) == n_classes
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and abs(x) <= OFFSET_LIMIT for x in value))
