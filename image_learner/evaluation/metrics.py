"""Classification metrics from true labels and predicted probabilities (pure; scikit-learn only).

Every number the tool reports is computed here from ``predictions.csv``-style arrays, never copied
from Ludwig's training statistics. Conventions for all functions:

- ``y_true``: class names, shape (n,); ``proba``: probabilities, shape (n, k), columns in ``classes``
  order; ``y_pred``: predicted names (default: the arg-max class). For a binary task ``classes`` is
  ``[negative, positive]`` and ``y_pred`` comes from the chosen threshold.
- A metric that cannot be computed on the given rows (one class only, no rows) is ``None``.
- Every macro average (precision, recall, F1, balanced accuracy, ROC-AUC, average precision) is the
  plain mean over the classes present in that split's ``y_true``; a class with no true rows there has
  no recall and no ROC curve, so it is left out of all of them alike. ``macro_over`` lists the classes
  averaged, ``classes_absent`` those left out (the per-class table still shows every class). A binary
  task's ROC-AUC and average precision are those of the positive class (its ROC-AUC equals the mean
  over both classes; average precision is the usual positive-class figure).
- Calibration (ECE, reliability diagram), 10 equal-width bins: binary tasks bin P(positive) and
  compare each bin's mean P(positive) with its observed fraction of positives (as
  ``sklearn.calibration.calibration_curve``), which does not depend on the decision threshold;
  multiclass tasks bin the top-class probability and compare it with how often the arg-max class (the
  predicted label there) is right. ECE is the bins' absolute gaps weighted by their share of rows.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from sklearn import metrics as skm

from image_learner.evaluation import bootstrap

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")
ECE_BINS = 10


def _prepare(y_true, proba, classes, y_pred):
    y_true = np.asarray(y_true).astype(str)
    classes = [str(c) for c in classes]
    proba = np.asarray(proba, dtype=float).reshape(len(y_true), len(classes))
    y_pred = np.asarray(classes)[proba.argmax(axis=1)] if y_pred is None else np.asarray(y_pred).astype(str)
    return y_true, proba, classes, y_pred


def _safe(fn, *args, **kwargs):
    """A metric's value, or None where it is undefined on these rows (e.g. one class only)."""
    try:
        value = float(fn(*args, **kwargs))
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _one_vs_rest(score, y_true, proba, classes):
    """(scores, supports) of ``score(is_class, class_probability)`` for each class present; a binary
    task scores its positive class only. None when fewer than two classes are present."""
    y_true, proba, classes, _ = _prepare(y_true, proba, classes, None)
    present = [c for c in classes if c in set(y_true)]
    if len(present) < 2:
        return None
    scored = [classes[1]] if len(classes) == 2 else present
    return ([float(score(y_true == c, proba[:, classes.index(c)])) for c in scored],
            [int((y_true == c).sum()) for c in scored])


def roc_auc(y_true, proba, classes, average: str = "macro"):
    """One-vs-rest ROC-AUC over the classes present (binary: AUC of the positive class);
    ``average`` "macro" (plain mean) or "weighted" (by each class's rows)."""
    result = _one_vs_rest(skm.roc_auc_score, y_true, proba, classes)
    if result is None:
        return None
    scores, supports = result
    return float(np.mean(scores) if average == "macro" else np.average(scores, weights=supports))


def average_precision(y_true, proba, classes):
    """Macro average precision (area under the precision-recall curve) over the classes present."""
    result = _one_vs_rest(skm.average_precision_score, y_true, proba, classes)
    return None if result is None else float(np.mean(result[0]))


def expected_calibration_error(y_true, proba, classes, n_bins: int = ECE_BINS):
    """ECE by the calibration rule in the module docstring. Also returns the non-empty bins
    (lower edge, upper edge, rows, observed, mean predicted) for a reliability diagram: observed is
    the fraction of positives (binary) or of right arg-max predictions (multiclass), mean predicted
    the mean P(positive) or the mean top-class probability."""
    y_true, proba, classes, _ = _prepare(y_true, proba, classes, None)
    if len(y_true) == 0:
        return None, []
    if len(classes) == 2:  # threshold-free: the positive-class probability against the positive rate
        predicted, observed = proba[:, 1], y_true == classes[1]
    else:
        predicted, observed = proba.max(axis=1), np.asarray(classes)[proba.argmax(axis=1)] == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins closed on the right, 0 in the first one, as calibration_curve bins them
    which = np.clip(np.digitize(predicted, edges[1:-1], right=True), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        rows = which == b
        if rows.any():
            obs, pred = observed[rows].mean(), predicted[rows].mean()
            ece += rows.mean() * abs(obs - pred)
            bins.append((float(edges[b]), float(edges[b + 1]), int(rows.sum()), float(obs), float(pred)))
    return float(ece), bins


def specificity(y_true, y_pred, positive) -> float | None:
    """True-negative rate of ``positive`` treated one-vs-rest."""
    negatives = np.asarray(y_true) != positive
    if not negatives.any():
        return None
    return float((np.asarray(y_pred)[negatives] != positive).mean())


def split_metrics(y_true, proba, classes, y_pred=None) -> dict:
    """Every headline metric for one split (see the module docstring for the conventions)."""
    y_true, proba, classes, y_pred = _prepare(y_true, proba, classes, y_pred)
    n = len(y_true)
    if n == 0:
        return {"n": 0}
    present = sorted(set(y_true))
    out = {
        "n": n,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=present, average=average,
                                                         zero_division=0)
        out.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    out["roc_auc_macro"] = roc_auc(y_true, proba, classes, "macro")
    out["roc_auc_weighted"] = roc_auc(y_true, proba, classes, "weighted")
    out["average_precision_macro"] = average_precision(y_true, proba, classes)
    out["cohen_kappa"] = _safe(skm.cohen_kappa_score, y_true, y_pred)
    out["matthews_corrcoef"] = _safe(skm.matthews_corrcoef, y_true, y_pred)
    # scikit-learn's log loss and top-k want their labels sorted, the probability columns to match
    order = np.argsort(classes)
    sorted_classes, sorted_proba = np.asarray(classes)[order], np.clip(proba[:, order], 1e-15, 1.0)
    out["log_loss"] = _safe(skm.log_loss, y_true, sorted_proba / sorted_proba.sum(axis=1, keepdims=True),
                            labels=sorted_classes)
    for k in (2, 3):
        if k < len(classes):
            out[f"top_{k}_accuracy"] = _safe(skm.top_k_accuracy_score, y_true, sorted_proba, k=k, labels=sorted_classes)
    out["expected_calibration_error"] = expected_calibration_error(y_true, proba, classes)[0]
    out["roc_auc"] = out["roc_auc_macro"]  # short name kept for scripts written against earlier versions
    out["macro_over"] = [c for c in classes if c in set(y_true)]
    out["classes_absent"] = [c for c in classes if c not in set(y_true)]
    return out


def per_class_table(y_true, proba, classes, y_pred=None) -> list[dict]:
    """Per class: precision, recall (sensitivity), specificity, F1, one-vs-rest ROC-AUC, support."""
    y_true, proba, classes, y_pred = _prepare(y_true, proba, classes, y_pred)
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    rows = []
    for k, cls in enumerate(classes):
        is_cls = y_true == cls
        auc = _safe(skm.roc_auc_score, is_cls, proba[:, k]) if 0 < is_cls.sum() < len(y_true) else None
        rows.append({"class": cls, "precision": float(p[k]) if (y_pred == cls).any() else None,
                     "recall": float(r[k]) if support[k] else None, "specificity": specificity(y_true, y_pred, cls),
                     "f1": float(f[k]) if support[k] else None, "roc_auc": auc, "support": int(support[k])})
    return rows


def bootstrap_ci(y_true, proba, classes, y_pred=None, metric_names=HEADLINE, n_resamples: int = 1000,
                 seed: int = 42, level: float = 0.95, groups=None) -> dict:
    """Percentile bootstrap intervals of the headline metrics: ``groups`` (default: each row its own)
    resampled with replacement ``n_resamples`` times with a seeded generator (same seed, same interval),
    every row of a drawn group scored (bootstrap.py). Each resample is scored by the same rules as a split
    (macro averages over the classes present in it); a resample on which a metric is undefined (ROC-AUC
    with fewer than two classes in it) is skipped for that metric, and a metric with fewer than 10 defined
    resamples gets no interval (None)."""
    samples = bootstrap_samples(y_true, proba, classes, y_pred, metric_names, n_resamples, seed, groups)
    return percentile_intervals(samples, level)


def percentile_intervals(samples: dict, level: float = 0.95, min_defined: int = 10) -> dict:
    """{metric: [low, high]} percentile intervals of bootstrap ``samples`` ({metric: values per resample},
    NaN where undefined); None for a metric with fewer than ``min_defined`` defined resamples. Only finite
    values count as defined: an overflowed resample (infinite RMSE) is no bound."""
    tail = (1.0 - level) / 2 * 100
    intervals = {}
    for name, values in samples.items():
        defined = values[np.isfinite(values)]
        intervals[name] = ([float(np.percentile(defined, tail)), float(np.percentile(defined, 100 - tail))]
                           if len(defined) >= min_defined else None)
    return intervals


def bootstrap_samples(y_true, proba, classes, y_pred=None, metric_names=HEADLINE, n_resamples: int = 1000,
                      seed: int = 42, groups=None, max_cells: int = bootstrap.MAX_CELLS) -> dict:
    """{metric: value per resample, NaN where undefined} of the cluster bootstrap (bootstrap.py), a chunk
    of resamples at a time: counting metrics from per-resample confusion matrices, ROC-AUC as a weighted
    rank statistic (each row weighted by how often the resample drew it). Equals scikit-learn on each
    resample's rows (bootstrap.resample_rows)."""
    y_true, proba, classes, y_pred = _prepare(y_true, proba, classes, y_pred)
    n, k = len(y_true), len(classes)
    lookup = {c: i for i, c in enumerate(classes)}
    if not set(y_true) <= set(lookup):
        raise ValueError(f"true labels outside the classes: {sorted(set(y_true) - set(lookup))}")
    true = np.array([lookup[v] for v in y_true], dtype=np.int64)
    pred = np.array([lookup.get(v, k) for v in y_pred], dtype=np.int64)  # column k: a label outside classes
    # each row's cell of the confusion matrix, sparse: k * (k + 1) dense columns would not fit many classes
    pair = sparse.csr_matrix((np.ones(n), (np.arange(n), true * (k + 1) + pred)), shape=(n, k * (k + 1)))
    # binary: the positive class's AUC; the sorting is shared by every resample
    plans = [_auc_plan(proba[:, c], true == c) for c in ([1] if k == 2 else range(k))] \
        if "roc_auc_macro" in metric_names else []
    chunks = [_score_chunk(weights, pair, plans, k, metric_names)
              for weights in bootstrap.resample_weights(n, groups, n_resamples, seed, max_cells)]
    if not chunks:  # no rows: nothing to resample
        return {name: np.full(n_resamples, np.nan) for name in metric_names}
    return {name: np.concatenate([c[name] for c in chunks]) for name in metric_names}


def _score_chunk(weights, pair, plans, k: int, metric_names) -> dict:
    """The headline metrics of the resamples in ``weights`` (rows x resamples: how often each row is drawn)."""
    count = weights.shape[1]
    confusion = np.asarray(pair.T @ weights).T.round().astype(np.int64).reshape(count, k, k + 1)
    hits = confusion[:, np.arange(k), np.arange(k)]
    support, called = confusion.sum(axis=2), confusion[:, :, :k].sum(axis=1)
    present = support > 0
    n_present = present.sum(axis=1)
    recall = hits / np.maximum(support, 1)
    f1 = 2 * hits / np.maximum(support + called, 1)  # 2TP / (2TP + FP + FN); 0 where that is 0/0
    # a group resample holds as many rows as its drawn groups have, not n
    values = {"accuracy": hits.sum(axis=1) / support.sum(axis=1),
              "balanced_accuracy": (recall * present).sum(axis=1) / n_present,
              "macro_f1": (f1 * present).sum(axis=1) / n_present}
    if "roc_auc_macro" in metric_names:
        auc = np.column_stack([_weighted_auc(plan, weights) for plan in plans])
        with warnings.catch_warnings():  # classes absent from a resample are NaN columns there
            warnings.simplefilter("ignore", RuntimeWarning)
            values["roc_auc_macro"] = np.where(n_present >= 2, np.nanmean(auc, axis=1), np.nan)
    return {name: values[name].astype(float) for name in metric_names}


def _auc_plan(scores, is_positive) -> tuple:
    """What every resample's weighted AUC of one class shares: the negatives sorted by score, the
    positives, and for each positive how many sorted negatives lie strictly below it and at or below it."""
    negative = np.flatnonzero(~is_positive)
    negative = negative[np.argsort(scores[negative], kind="stable")]
    positive = np.flatnonzero(is_positive)
    sorted_negative = scores[negative]
    return (negative, positive, np.searchsorted(sorted_negative, scores[positive], side="left"),
            np.searchsorted(sorted_negative, scores[positive], side="right"))


def _weighted_auc(plan, weights) -> np.ndarray:
    """Per resample (column of ``weights``: how often each row was drawn), the Mann-Whitney AUC of the
    positive rows' scores against the rest (``plan``: _auc_plan), ties counting one half; NaN without
    positives or negatives. The sorted negatives' weights are cumulated; each positive adds its weight
    times the negative weight below it plus half the tied one. Whole numbers (exact) until the division."""
    negative, positive, below_index, up_to_index = plan
    cumulated = np.zeros((len(negative) + 1, weights.shape[1]))
    np.cumsum(weights[negative], axis=0, out=cumulated[1:])
    drawn = weights[positive]
    wins2 = (drawn * (cumulated[below_index] + cumulated[up_to_index])).sum(axis=0)  # twice (wins + ties / 2)
    pairs2 = 2 * drawn.sum(axis=0) * cumulated[-1]
    return np.divide(wins2, pairs2, out=np.full(weights.shape[1], np.nan), where=pairs2 > 0)


def metrics_by_split(predictions, classes, seed: int = 42, splits=("train", "validation", "test")) -> dict:
    """metrics.json: per split (rows of a predictions table with ``split``, ``true_label``,
    ``predicted_label`` and ``prob_<class>`` columns) every metric and the per-class table; for the
    test split also seeded 95% bootstrap intervals of the headline metrics ("ci95"; groups of the
    ``sample_id`` and ``duplicate_group`` columns resampled whole) and what they rest on ("ci95_basis")."""
    result = {}
    for name in splits:
        part = predictions[predictions["split"] == name]
        if len(part):
            args = (part["true_label"], part[[f"prob_{c}" for c in classes]].to_numpy(), classes,
                    part["predicted_label"])
            result[name] = {**split_metrics(*args), "per_class": per_class_table(*args)}
            if name == "test":  # images sharing a sample id or a duplicate group are resampled together
                groups = bootstrap.cluster_ids(part)
                result[name]["ci95"] = bootstrap_ci(*args, seed=seed, groups=groups)
                result[name]["ci95_basis"] = bootstrap.basis(part, groups)
    return result


# --threshold-metric: what the binary decision threshold maximises on the validation split.
THRESHOLD_POLICIES = ("youden", "balanced_accuracy", "f1", "mcc")
THRESHOLD_POLICY_NAMES = {"youden": "Youden's J", "balanced_accuracy": "balanced accuracy", "f1": "F1",
                          "mcc": "Matthews correlation"}


def threshold_scores(is_positive, p_positive, policy: str = "youden") -> tuple[np.ndarray, np.ndarray]:
    """Every candidate threshold (each distinct P(positive), highest first; a row is called positive when
    P >= threshold) and the ``policy``'s value there:

    - ``youden``: Youden's J = sensitivity + specificity - 1;
    - ``balanced_accuracy``: (sensitivity + specificity) / 2 = (1 + J) / 2, so it always picks the same
      threshold as ``youden`` (the ROC point farthest above the diagonal); both names are offered, as users
      know the rule by either;
    - ``f1``: F1 of the positive class (ignores true negatives: favours calling more rows positive when
      positives are rare);
    - ``mcc``: Matthews correlation coefficient (0 where undefined, as scikit-learn).
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy must be one of {THRESHOLD_POLICIES}, not {policy!r}")
    is_positive = np.asarray(is_positive, dtype=bool)
    p_positive = np.asarray(p_positive, dtype=float)
    candidates = np.unique(p_positive)[::-1]
    # rows at or above each candidate: counted by binary search on the sorted probabilities
    tp = np.sum(is_positive) - np.searchsorted(np.sort(p_positive[is_positive]), candidates, side="left")
    fp = np.sum(~is_positive) - np.searchsorted(np.sort(p_positive[~is_positive]), candidates, side="left")
    n_pos, n_neg = is_positive.sum(), (~is_positive).sum()
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        if policy in ("youden", "balanced_accuracy"):
            j = tp / n_pos - fp / n_neg
            scores = j if policy == "youden" else (1 + j) / 2
        elif policy == "f1":
            scores = 2 * tp / (2 * tp + fp + fn)
        else:
            denominator = np.sqrt((tp + fp).astype(float) * (tp + fn) * (tn + fp) * (tn + fn))
            scores = np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)
    return candidates, scores.astype(float)


UNTUNED_THRESHOLD = 0.5  # what a threshold is when the rows cannot tune one


def threshold_problem(is_positive) -> str | None:
    """Why no threshold can be tuned on these rows, or None when one can: "no rows", or "one class" (every
    row positive, or every row negative: there is nothing to trade off)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if not len(is_positive):
        return "no rows"
    return "one class" if is_positive.all() or not is_positive.any() else None


def threshold_choice(is_positive, p_positive, policy: str = "youden") -> tuple[float, str | None]:
    """(threshold, problem): choose_threshold's threshold and threshold_problem's reason when it could not
    be tuned (then the threshold is UNTUNED_THRESHOLD, and the caller must say so, never "tuned")."""
    return choose_threshold(is_positive, p_positive, policy), threshold_problem(is_positive)


def choose_threshold(is_positive, p_positive, policy: str = "youden") -> float:
    """Binary decision threshold that maximises ``policy`` (THRESHOLD_POLICIES, see threshold_scores) on
    the given rows: meant for the validation split, never the test split.

    Ties (within 1e-12) go to the threshold closest to 0.5, and between two equally close ones to the
    higher. With no rows or one class only (nothing to trade off) it returns UNTUNED_THRESHOLD, 0.5:
    threshold_choice / threshold_problem say when that happened.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if threshold_problem(is_positive):
        if policy not in THRESHOLD_POLICIES:
            raise ValueError(f"threshold policy must be one of {THRESHOLD_POLICIES}, not {policy!r}")
        return UNTUNED_THRESHOLD
    candidates, scores = threshold_scores(is_positive, p_positive, policy)
    best = candidates[scores >= scores.max() - 1e-12]  # highest first, so argmin keeps the higher on a tie
    return float(best[np.argmin(np.abs(best - 0.5))])
