"""The multiclass decision (``--class-decision``): the plain argmax, or one moved towards the rare classes,
tuned on the validation rows for balanced accuracy (pure).

A multiclass model trained on skewed classes (HAM10000: two thirds one class) can rank well and still decide
for the majority class. ``balanced`` is post-hoc logit adjustment (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021): predict argmax_k log p_k - alpha * log pi_k, with pi the train split's class
frequencies; alpha 0 is the argmax, 1 divides the probabilities by the priors. Alpha is chosen on the validation
rows, the way a binary task's threshold is tuned there (metrics.choose_threshold), never on test rows: the ALPHAS
value with the highest balanced accuracy (the smallest on a tie) among those whose gain over the argmax is more
than noise there (the 95% lower bound of the paired gain, over the group bootstrap's resamples of those rows, above
0); where none is, the argmax (alpha 0). The gate matters on weak models, whose flat curves peaked on a gain of
+0.001 bought with half the accuracy (BENCHMARKS.md, "An alpha that beats its noise"). With cross-validation, as
the threshold: each fold's alpha on its validation part (its out-of-fold labels), the delivered model's on the
pooled out-of-fold rows. It trades accuracy for balanced accuracy (BENCHMARKS.md, "A balanced decision rule"); the
probabilities, ROC-AUC, calibration and prediction sets do not change, only the predicted label. The model records
the per-class offsets (alpha * log pi) and predict subtracts the same ones.
"""

from __future__ import annotations

import math

import numpy as np

from image_learner.evaluation import bootstrap, metrics

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


def resampled_balanced_accuracy(true_index: np.ndarray, decided: list, groups=None,
                                n_resamples: int = bootstrap.N_RESAMPLES, seed: int = 42) -> np.ndarray:
    """(resamples, len(decided)): each decision's balanced accuracy in each group-bootstrap resample of the rows,
    as the intervals compute it (metrics.bootstrap_samples: groups drawn whole, a class averaged only where the
    resample drew a row of it); the same seed and groups for every decision, so the draws are shared and the
    differences paired."""
    true_index = np.asarray(true_index, dtype=int)
    names = np.array([str(c) for c in range(1 + max(int(np.max(d, initial=0)) for d in [true_index, *decided]))])
    unused = np.zeros((len(true_index), len(names)))  # probabilities: only ROC-AUC would read them
    return np.column_stack([metrics.bootstrap_samples(names[true_index], unused, names, names[np.asarray(predicted)],
                                                      ("balanced_accuracy",), n_resamples, seed, groups)
                            ["balanced_accuracy"] for predicted in decided])


def choose(labels, proba: np.ndarray, classes: list[str], train_labels, chosen_on: str = "validation rows",
           groups=None, seed: int = 42, n_resamples: int = bootstrap.N_RESAMPLES) -> dict:
    """The balanced decision fitted on these rows (meant for the validation split; ``chosen_on`` names them,
    ``groups`` says which rows the bootstrap draws together, as the intervals do): alpha, the offsets to record,
    the rows' balanced accuracy and accuracy with the argmax and with the chosen alpha, and ``curve``: for every
    alpha tried, both and ``gain_lower`` (the 95% lower bound of its paired balanced-accuracy gain over the
    argmax; an alpha is eligible only where it is above 0)."""
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index[str(v)] for v in labels], dtype=int)
    priors = log_priors(train_labels, classes)
    decided = [decide(proba, a * priors) for a in ALPHAS] if len(true) else []
    curve = [{"alpha": a, "balanced_accuracy": balanced_accuracy(true, d), "accuracy": float(np.mean(d == true))}
             for a, d in zip(ALPHAS, decided)]
    if curve:
        samples = resampled_balanced_accuracy(true, decided, groups, n_resamples, seed)
        lower = np.percentile(samples - samples[:, :1], 2.5, axis=0)
        for point, bound in zip(curve, lower):
            point["gain_lower"] = 0.0 if point["alpha"] == 0 else float(bound)
    scores = np.array([p["balanced_accuracy"] if p["alpha"] == 0 or p["gain_lower"] > 0 else -np.inf
                       for p in curve])
    chosen = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0]) if curve else 0  # the smallest on a tie
    top = int(np.argmax([p["balanced_accuracy"] for p in curve])) if curve else 0  # the ungated choice
    none = {"balanced_accuracy": math.nan, "accuracy": math.nan}  # no rows: nothing measured
    argmax, best = (curve[0], curve[chosen]) if curve else (none, none)
    return {"rule": "balanced", "alpha": ALPHAS[chosen], "offsets": (ALPHAS[chosen] * priors).tolist(),
            "rows": int(len(true)), "chosen_on": chosen_on,
            "groups": int(len(np.unique(groups))) if groups is not None else int(len(true)),
            "resamples": int(n_resamples), "highest_alpha": ALPHAS[top],
            "balanced_accuracy_argmax": argmax["balanced_accuracy"],
            "balanced_accuracy_chosen": best["balanced_accuracy"],
            "accuracy_argmax": argmax["accuracy"], "accuracy_chosen": best["accuracy"], "curve": curve}


def describe(record: dict | None) -> str:
    """One log/report line."""
    if not record:
        return "decision: the most probable class (argmax)"
    rows = f"{record['rows']} {record['chosen_on']}"
    if record["alpha"] == 0 and record.get("highest_alpha", 0) > 0:
        top = next(p for p in record["curve"] if p["alpha"] == record["highest_alpha"])
        return (f"decision: balanced (logit adjustment) kept the argmax: no alpha beat it beyond noise on the {rows} "
                f"(the highest, alpha {top['alpha']:g}: balanced accuracy {record['balanced_accuracy_argmax']:.3f} -> "
                f"{top['balanced_accuracy']:.3f}, 95% lower bound of the gain {top['gain_lower']:+.3f}; accuracy "
                f"{record['accuracy_argmax']:.3f} -> {top['accuracy']:.3f})")
    passed_over = record.get("highest_alpha", record["alpha"]) != record["alpha"]
    return (f"decision: balanced (logit adjustment), alpha {record['alpha']:g} chosen on the {rows} "
            f"for balanced accuracy ({record['balanced_accuracy_argmax']:.3f} with the "
            f"argmax -> {record['balanced_accuracy_chosen']:.3f}; accuracy {record['accuracy_argmax']:.3f} -> "
            f"{record['accuracy_chosen']:.3f})"
            + (f"; alpha {record['highest_alpha']:g} scored higher but its gain was within noise"
               if passed_over else ""))


def check_offsets(value, n_classes: int) -> bool:
    """A model file's offsets as training writes them: one finite number per class, |x| <= OFFSET_LIMIT."""
    return (isinstance(value, list) and len(value) == n_classes
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and abs(x) <= OFFSET_LIMIT for x in value))
