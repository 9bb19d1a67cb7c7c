"""How the binary decision threshold was set and why the kept epoch was kept, in words that are always
true (pure; run_summary.json, the log and the report print them).

Where the rows could not do what was asked (no validation rows, validation rows of one class, every
epoch scoring the same), the text says so ("not tuned: ...", "last epoch: ...", "tie: ...") and a
WARNING goes with it: a provenance string is never more flattering than the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from image_learner.evaluation import metrics
from image_learner.errors import InputError, listed
from image_learner.training.ludwig_config import VALIDATION_METRICS

NO_VALIDATION_EPOCH = "last epoch: no validation split"


@dataclass
class ThresholdChoice:
    value: float
    provenance: str  # run_summary's threshold_policy
    warning: str | None = None  # set when the threshold could not be tuned

    @property
    def tuned(self) -> bool:
        return self.provenance.startswith("tuned")


def threshold_choice(labels, p_positive, positive: str, negative: str, fixed: float | None, policy: str,
                     rows: str = "validation rows", tuned_on: str = "the validation split") -> ThresholdChoice:
    """The binary threshold for these rows (``labels``, P(positive)) and how it was set: ``fixed`` (the user's
    --threshold), or tuned for the highest ``policy``; "not tuned: ..., 0.5" with a warning when the rows are
    empty or of one class. ``rows`` names the rows in the short form ("validation rows"), ``tuned_on`` in
    the long one ("the validation split")."""
    if fixed is not None:
        return ThresholdChoice(float(fixed), "fixed by --threshold")
    labels = np.asarray(labels).astype(str)
    is_positive = labels == positive
    value, problem = metrics.threshold_choice(is_positive, np.asarray(p_positive, dtype=float), policy)
    if problem == "no rows":
        text = f"not tuned: no {rows}, {value:g}"
    elif problem:
        text = f"not tuned: {rows} hold one class ({str(labels[0])!r}, {len(labels)} rows), {value:g}"
    else:
        n_pos = int(is_positive.sum())
        return ThresholdChoice(value, f"tuned on {tuned_on} ({len(labels)} rows: {n_pos} {positive!r}, "
                                      f"{len(labels) - n_pos} {negative!r}) for the highest "
                                      f"{metrics.THRESHOLD_POLICY_NAMES[policy]}")
    return ThresholdChoice(value, text, f"decision threshold {text}: P({positive}) >= {value:g} is called "
                                        f"{positive!r}; set --threshold, or give the split {rows} of both classes")


def _epochs(epochs: list[int]) -> str:
    """[1, 2, 3] -> "1-3"; [1, 3] -> "1 and 3"."""
    if len(epochs) > 2 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}"
    return listed(map(str, epochs[:-1])) + f" and {epochs[-1]}"


def kept_epoch_choice(history: pd.DataFrame, task: str, validation_metric: str,
                      who: str = "") -> tuple[str, str | None]:
    """(why the kept epoch was kept, a warning or None) from the training history, by the rule of
    ludwig_trainer.best_epoch_of (best validation value, earliest on a tie; the last epoch without
    validation). A tie is said as such; every epoch tied, or no validation, is a warning. ``who``: a prefix
    for the warning ("fold 2: ")."""
    _, column, higher_is_better = VALIDATION_METRICS[task][validation_metric]
    name = column.replace("_", " ")
    values = history["validation_" + column] if "validation_" + column in history else None
    last = int(history["epoch"].iloc[-1])
    if values is None or values.isna().all():
        return NO_VALIDATION_EPOCH, (f"{who}no validation rows: the kept model is the last epoch ({last}); "
                                     "no epoch was chosen and early stopping had nothing to watch")
    best = values.max() if higher_is_better else values.min()
    tied = history.loc[values == best, "epoch"].astype(int).tolist()
    if len(tied) < 2:
        return f"{'highest' if higher_is_better else 'lowest'} validation {name}", None
    text = f"tie: epochs {_epochs(tied)} have the same validation {name} ({best:.4g}); earliest kept"
    warning = None
    if len(tied) == len(history):
        warning = (f"{who}validation {name} was {best:.4g} in every epoch (1-{last}): the kept epoch "
                   f"({tied[0]}) is a tie-break, not a choice")
    return text, warning


def fold_validation_warnings(fold: int, rows: pd.DataFrame, task: str) -> list[str]:
    """What is wrong with one fold's carved validation part (``rows``: the fold's training rows, ``split`` 1
    for validation, with ``label`` and ``group``), as split_utils.check_split says it of a split: empty, one
    class, classes without validation rows."""
    part = rows[rows["split"] == 1]
    n, groups = len(part), int(part["group"].nunique())
    if n == 0:
        return [f"fold {fold}: the validation part is empty: the fold's kept epoch is its last"
                + (" and its threshold is not tuned (0.5)" if task == "binary" else "")]
    if task == "regression":
        return [] if groups > 1 else [f"fold {fold}: the validation part is {n} image(s) in 1 group: the kept "
                                      "epoch rests on one sample"]
    present = sorted(set(part["label"].astype(str)))
    if len(present) == 1:
        return [f"fold {fold}: the validation part holds one class ({present[0]!r}: {n} image(s) in {groups} "
                "group(s)): a ranking metric cannot be computed on it, so the kept epoch is a tie-break"
                + (" and the fold's threshold is not tuned (0.5)" if task == "binary" else "")]
    absent = sorted(set(rows["label"].astype(str)) - set(present))
    if absent:
        return [f"fold {fold}: class(es) {listed(map(repr, absent))} have no rows in the validation part "
                f"({n} image(s) in {groups} group(s)): the fold's kept epoch is chosen without them"]
    return []


def require_threshold_rows(task: str, split_codes, threshold: float | None, probabilities,
                           split_column: str | None) -> None:
    """Refuse, before training, a binary single-split run whose split has no validation rows and no fixed
    --threshold: its threshold could only be an untuned 0.5 and its kept epoch the last one."""
    if task != "binary" or threshold is not None or (np.asarray(split_codes) == 1).any():
        return
    shares = " ".join(f"{p:g}" for p in probabilities)
    where = (f"split column {split_column!r} has no validation rows and --split-probabilities {shares} carved "
             "none" if split_column else f"--split-probabilities {shares}")
    raise InputError(f"a binary task tunes its decision threshold on validation rows, and this split has "
                     f"none ({where}): give validation a share with --split-probabilities (e.g. 0.7 0.1 0.2), "
                     "or fix the threshold with --threshold (e.g. --threshold 0.5)")
