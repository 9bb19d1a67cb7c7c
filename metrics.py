"""Classification metrics from true labels and predicted probabilities (pure; scikit-learn only).

Every number the tool reports is computed here from ``predictions.csv``-style arrays, never copied
from Ludwig's training statistics.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def split_metrics(y_true, proba, classes, y_pred=None) -> dict:
    """Headline metrics for one split.

    ``y_true``: class names (n,); ``proba``: (n, k) probabilities in ``classes`` order; ``y_pred``:
    predicted names (defaults to the arg-max class). ROC-AUC is one-vs-rest over the classes present
    in ``y_true`` (None when fewer than two are present).
    """
    y_true = np.asarray(y_true).astype(str)
    proba = np.asarray(proba, dtype=float)
    classes = [str(c) for c in classes]
    if y_pred is None:
        y_pred = np.asarray(classes)[proba.argmax(axis=1)]
    y_pred = np.asarray(y_pred).astype(str)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro",
                                       zero_division=0)) if len(y_true) else None,
        "roc_auc": None,
    }
    present = [c for c in classes if c in set(y_true)]
    if len(present) >= 2:
        if len(classes) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
        else:
            idx = [classes.index(c) for c in present]
            sub = proba[:, idx]
            sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
            out["roc_auc"] = float(skm.roc_auc_score(y_true, sub, labels=present, multi_class="ovr",
                                                     average="macro"))
    return out


def choose_threshold(is_positive, p_positive) -> float:
    """Binary decision threshold that maximises balanced accuracy (Youden's J) on the given rows.

    Meant for the validation split; ties go to the threshold closest to 0.5. With one class
    only (nothing to balance) it returns 0.5.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    p_positive = np.asarray(p_positive, dtype=float)
    if is_positive.all() or not is_positive.any():
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(is_positive, p_positive)
    finite = np.isfinite(thresholds)
    j = (tpr - fpr)[finite]
    candidates = thresholds[finite][j >= j.max() - 1e-12]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])
