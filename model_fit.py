"""One model fit, shared by the single split, each cross-validation fold and the final CV model: the
Ludwig table of some rows of the prepared data, its config, training, and class probabilities.

Rows carry split codes 0/1/2 (train / validation for the kept epoch / evaluated each epoch); which rows
and which codes is the caller's choice. Ludwig itself is imported by ludwig_trainer, on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

import ludwig_config
import metrics
from ludwig_config import TrainingOptions


@dataclass
class Fit:
    trained: object  # ludwig_trainer.TrainedModel
    config: dict
    class_weights: dict | None
    positive_weight: float | None
    train_rows: int


def class_order(data) -> list[str]:
    """Probability columns: sorted class names; for binary, negative first then positive."""
    if data.task == "binary":
        return [c for c in data.classes if c != data.positive_label] + [data.positive_label]
    return data.classes


def ludwig_inputs(data, rows: pd.DataFrame, opts: TrainingOptions):
    """(Ludwig table, class weights, positive weight) for ``rows`` (a slice of ``data.table`` whose
    ``split`` column says each row's role); balanced weights come from its train rows."""
    table = pd.DataFrame({
        ludwig_config.IMAGE_FEATURE: rows["read_path"].to_numpy(),
        ludwig_config.LABEL_FEATURE: rows["label"].to_numpy(),
        ludwig_config.SPLIT_COLUMN: rows["split"].to_numpy(),
    })
    if data.task == "binary":
        table[ludwig_config.LABEL_FEATURE] = table[ludwig_config.LABEL_FEATURE] == data.positive_label
    class_weights = positive_weight = None
    if opts.class_weights == "balanced":
        train_labels = rows.loc[rows["split"] == 0, "label"]
        weights = ludwig_config.balanced_class_weights(train_labels)
        if data.task == "binary":
            negative = next(c for c in data.classes if c != data.positive_label)
            positive_weight = weights.get(data.positive_label, 1.0) / weights.get(negative, 1.0)
        else:
            class_weights = {c: weights.get(c, 1.0) for c in data.classes}
    return table, class_weights, positive_weight


def config_for(data, rows: pd.DataFrame, opts: TrainingOptions):
    """(Ludwig table, config, class weights, positive weight, train rows) of one fit, without training."""
    table, class_weights, positive_weight = ludwig_inputs(data, rows, opts)
    train_rows = int((rows["split"] == 0).sum())
    config = ludwig_config.build_ludwig_config(opts, data.task, class_weights, positive_weight, train_rows=train_rows)
    return table, config, class_weights, positive_weight, train_rows


def fit(data, rows: pd.DataFrame, opts: TrainingOptions, work_dir: str, model_dir: str, ddp_workers: int = 0) -> Fit:
    """Train on ``rows``; Ludwig's files go below ``work_dir``, the model to ``model_dir``. ``ddp_workers``:
    train data-parallel in that many processes (data_parallel); 0: in this process."""
    import ludwig_trainer  # imports Ludwig (slow): only once the inputs are known to be good

    table, config, class_weights, positive_weight, train_rows = config_for(data, rows, opts)
    os.makedirs(work_dir, exist_ok=True)
    if ddp_workers:
        import data_parallel

        trained = data_parallel.train(table, config, work_dir, model_dir, opts.random_seed, data.task,
                                      opts.validation_metric, ddp_workers)
    else:
        trained = ludwig_trainer.train(table, config, work_dir, model_dir, opts.random_seed, data.task,
                                       opts.validation_metric)
    return Fit(trained, config, class_weights, positive_weight, train_rows)


def probabilities(data, model: Fit, rows: pd.DataFrame, opts: TrainingOptions) -> np.ndarray:
    """Class probabilities (rows x classes, in ``class_order``) of ``rows`` by the fitted model."""
    import ludwig_trainer

    table = pd.DataFrame({ludwig_config.IMAGE_FEATURE: rows["read_path"].to_numpy()})
    return ludwig_trainer.predict_probabilities(model.trained.ludwig_model, table, class_order(data), data.task,
                                                opts.batch_size)


def binary_threshold(data, labels, p_positive, opts: TrainingOptions) -> float:
    """The user's fixed --threshold, or the one --threshold-metric picks on the given rows (validation, or
    out-of-fold predictions; never test)."""
    if opts.threshold is not None:
        return float(opts.threshold)
    is_positive = np.asarray(labels) == data.positive_label
    return metrics.choose_threshold(is_positive, np.asarray(p_positive), opts.threshold_metric)


def predicted_labels(data, proba: np.ndarray, threshold: float | None) -> np.ndarray:
    order = class_order(data)
    if threshold is not None:
        return np.where(proba[:, 1] >= threshold, order[1], order[0])
    return np.asarray(order)[proba.argmax(axis=1)]
