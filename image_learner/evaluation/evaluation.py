"""predictions.csv and metrics.json of a run, for every task (pure; no Ludwig).

A classification table has ``true_label``, ``predicted_label`` and one ``prob_<class>`` column per class;
a regression table has ``true_value`` and ``predicted_value`` (the target's unit). Both carry the image,
its split (or ``cross_validation`` for out-of-fold rows, with ``fold``), the sample id when there is one,
and the duplicate group. Metrics come from metrics.py (classes) or regression_metrics.py (numbers); their
bootstrap intervals draw the rows sharing a sample id or a duplicate group together (bootstrap.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from image_learner.evaluation import class_decision
from image_learner.evaluation import metrics
from image_learner.evaluation import regression_metrics
import split_utils


def predicted_labels(task: str, classes: list[str], outputs: np.ndarray, threshold: float | None,
                     class_offsets=None) -> np.ndarray:
    """What a model predicts from its ``outputs``: a binary task's label by ``threshold`` on P(positive)
    (``classes`` is [negative, positive]), another classification's most probable class (or, with
    ``class_offsets``, the balanced decision: class_decision.py), a regression's value as it is. Training,
    cross-validation and predict all call this one rule."""
    if task == "regression":
        return outputs[:, 0]
    if task == "binary":
        return np.where(outputs[:, 1] >= threshold, classes[1], classes[0])
    return np.asarray(classes)[class_decision.decide(outputs, class_offsets)]


def predictions_table(data, outputs: np.ndarray, predicted, classes: list[str], split_names=None,
                      fold=None) -> pd.DataFrame:
    """One row per image of ``data.table``: ``outputs`` (rows x classes probabilities, in ``classes``
    order; rows x 1 predicted values for a regression) and ``predicted`` (labels; values for a regression).
    ``split_names``: default the split of each row; ``fold``: the out-of-fold column, if any."""
    if split_names is None:
        split_names = np.asarray(split_utils.SPLIT_NAMES)[data.table["split"].to_numpy()]
    table = pd.DataFrame({"image": data.table["image"], "image_file": data.table["image_file"],
                          "split": split_names})
    if data.task == "regression":
        table["true_value"] = data.table["label"].to_numpy(float)
        table["predicted_value"] = np.asarray(predicted, dtype=float)
    else:
        table["true_label"] = data.table["label"]
        table["predicted_label"] = predicted
        for k, cls in enumerate(classes):
            table[f"prob_{cls}"] = outputs[:, k]
    if fold is not None:
        table["fold"] = fold
    if data.columns["sample_id"]:
        table["sample_id"] = data.table["sample_id"]
    table["duplicate_group"] = data.table["duplicate_group"]
    return table


def metrics_by_split(task: str, predictions: pd.DataFrame, classes: list[str], seed: int,
                     splits=split_utils.SPLIT_NAMES, baseline: float | None = None) -> dict:
    """metrics.json's per-split entries (bootstrap intervals on "test") for ``task``. ``baseline``: a
    regression's constant prediction to compare with (default: the train split's median)."""
    if task == "regression":
        return regression_metrics.metrics_by_split(predictions, seed, splits, baseline=baseline)
    return metrics.metrics_by_split(predictions, classes, seed, splits)
