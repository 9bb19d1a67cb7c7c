"""Out-of-distribution flag: is a new image unlike the images the model was checked on? (pure; numpy only)

Score: the maximum softmax probability (MSP; Hendrycks & Gimpel, ICLR 2017), the model's probability of
its top class (a binary model: max(P, 1 - P)); a low score is unusual. MSP, not the energy score, because
Ludwig's predict returns probabilities, not logits, and the energy of log-probabilities is the same
for every image (logsumexp(log p) = log 1 = 0). The score is taken on the probabilities as the model
outputs them.

Threshold: set on rows the model did not train on, never test rows: the validation split, or with
cross-validation the pooled out-of-fold predictions (the fold models stand in for the final model). With
``keep_rate`` q and n such rows, the threshold is their j-th smallest score, j = floor((1 - q)(n + 1)); a
row is flagged ``ood`` when its score is strictly below it. For a new image exchangeable with those rows
(from the same distribution), its rank among the n + 1 scores is uniform, so the chance of a false flag is
at most j / (n + 1) <= 1 - q (the split-conformal argument), and close to it for large n. Below
1 / (1 - q) - 1 rows (19 for q = 0.95) j is 0: no threshold can keep that promise, and none is set.
Nothing is promised for images of another kind: the flag catches those the model is unsure of; a model
can be confidently wrong far from its data, and the measured separation is in BENCHMARKS.md.

The record in the model manifest (``ood``) is hostile input when a model comes back: check_record.
"""

from __future__ import annotations

import math

import numpy as np

from image_learner.errors import InputError

SCORE = "max_softmax_probability"
DEFAULT_KEEP_RATE = 0.95
OPTION = "--ood-keep-rate"
FITTED_ON = ("validation", "out-of-fold")
FIELDS = ("score", "threshold", "keep_rate", "fitted_on", "rows")


def check_keep_rate(keep_rate: float) -> None:
    """0 (off) or a share strictly between 0 and 1."""
    if not (keep_rate == 0 or 0 < keep_rate < 1):
        raise InputError(f"{OPTION} must be 0 (off) or between 0 and 1 (the share of in-distribution "
                         f"validation images kept unflagged, e.g. 0.95), got {keep_rate}")


def scores(proba) -> np.ndarray:
    """The MSP of each row of ``proba`` (rows x classes, rows summing to 1)."""
    proba = np.asarray(proba, dtype=float)
    return proba.max(axis=1) if len(proba) else np.zeros(0)


def fit(proba, keep_rate: float, fitted_on: str) -> dict | None:
    """The manifest's record from the rows' probabilities (``fitted_on``: FITTED_ON), or None when off or
    with too few rows (min_rows)."""
    check_keep_rate(keep_rate)
    found = np.sort(scores(proba))
    if keep_rate == 0 or len(found) < min_rows(keep_rate):
        return None
    rank = int(math.floor((1 - keep_rate) * (len(found) + 1) + 1e-9))  # 1e-9: 0.05 * 20 is 1, not 0.999...
    return {"score": SCORE, "threshold": float(found[rank - 1]), "keep_rate": float(keep_rate),
            "fitted_on": fitted_on, "rows": int(len(found))}


def min_rows(keep_rate: float) -> int:
    """The fewest rows a threshold at ``keep_rate`` can be set on (module docstring): (1 - q)(n + 1) >= 1."""
    return max(1, math.ceil(1 / (1 - keep_rate) - 1 - 1e-9)) if keep_rate > 0 else 0


def flags(proba, record: dict) -> np.ndarray:
    """True where a row's score is below the record's threshold."""
    return scores(proba) < record["threshold"]


def describe(record: dict | None, flagged: np.ndarray | None = None) -> dict | None:
    """run_summary's "ood": the record and, given the flags of some rows, how many were flagged."""
    if record is None:
        return None
    out = dict(record)
    if flagged is not None:
        out.update({"images": int(len(flagged)), "flagged": int(np.sum(flagged)),
                    "flagged_share": float(np.mean(flagged)) if len(flagged) else None})
    return out


def _number(value, low: float, high: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def check_record(record, task: str, n_classes: int, file: str) -> None:
    """The manifest's ``ood`` as training writes it: null, or every field in range (the threshold an MSP
    of ``n_classes`` classes: from 1 / n_classes to 1). Anything else is an InputError naming the field."""
    if record is None:
        return
    where = f"{file}: ood"
    if task == "regression":
        raise InputError(f"{where} is {record!r:.80}, expected null for a regression model (no class probabilities)")
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        raise InputError(f"{where} is {record!r:.80}, expected null or an object with fields {', '.join(FIELDS)}")
    low = 1 / max(n_classes, 1) - 1e-6  # probabilities from float32: a hair below 1/K
    checks = (("score", record["score"] == SCORE, repr(SCORE)),
              ("threshold", _number(record["threshold"], low, 1.0), f"a number from 1/{n_classes} to 1"),
              ("keep_rate", _number(record["keep_rate"], 0, 1) and 0 < record["keep_rate"] < 1,
               "a number between 0 and 1"),
              ("fitted_on", record["fitted_on"] in FITTED_ON, " or ".join(map(repr, FITTED_ON))),
              ("rows", isinstance(record["rows"], int) and not isinstance(record["rows"], bool)
               and record["rows"] >= 1, "an integer of at least 1"))
    for name, ok, wanted in checks:
        if not ok:
            raise InputError(f"{where}.{name} is {record[name]!r:.80}, expected {wanted}")
