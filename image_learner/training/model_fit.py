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

from image_learner.training import ludwig_config
from image_learner.training import provenance
from image_learner.errors import InputError
from image_learner.training.ludwig_config import TrainingOptions


@dataclass
class Fit:
    trained: object  # ludwig_trainer.TrainedModel
    config: dict
    class_weights: dict | None
    positive_weight: float | None
    train_rows: int
    target_scaling: dict | None = None  # regression: the training rows' {"mean", "std"} (Ludwig sees z-scores)
    tabular: list | None = None  # --tabular-columns' encodings from this fit's training rows (data/tabular.py)


def class_order(data) -> list[str]:
    """Probability columns: sorted class names; for binary, negative first then positive; none for a regression."""
    if data.task == "binary":
        return [c for c in data.classes if c != data.positive_label] + [data.positive_label]
    return data.classes


def n_outputs(data) -> int:
    """Columns of ``outputs``: one probability per class, or the one predicted value of a regression."""
    return 1 if data.task == "regression" else len(class_order(data))


def target_scaling(train_values) -> dict:
    """Mean and standard deviation of the training rows' target: Ludwig trains on the z-scored target
    (from training rows only: Ludwig's own zscore would take them from every row, test included). A
    constant training target keeps a scale of 1. Beyond model_manifest's bounds (which predict holds a
    model to) it is an InputError: rescale the target."""
    from image_learner.model import model_manifest

    values = np.asarray(train_values, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(values.std())
        scaling = {"mean": float(values.mean()), "std": std if std > 0 else 1.0}
    if not model_manifest.target_scaling_ok(scaling):
        limit = model_manifest.TARGET_LIMIT
        raise InputError(f"the regression target's training rows have mean {scaling['mean']:g} and standard deviation "
                         f"{scaling['std']:g}; Image Learner handles a mean up to {limit:g} in size and a standard "
                         f"deviation from {1 / limit:g} to {limit:g}: rescale the target column")
    return scaling


def ludwig_inputs(data, rows: pd.DataFrame, opts: TrainingOptions):
    """(Ludwig table, class weights, positive weight, target scaling) for ``rows`` (a slice of
    ``data.table`` whose ``split`` column says each row's role); balanced weights and a regression
    target's scaling come from its train rows."""
    table = pd.DataFrame({
        ludwig_config.IMAGE_FEATURE: rows["read_path"].to_numpy(),
        ludwig_config.LABEL_FEATURE: rows["label"].to_numpy(),
        ludwig_config.SPLIT_COLUMN: rows["split"].to_numpy(),
    })
    if data.task == "regression":
        scaling = target_scaling(rows.loc[rows["split"] == 0, "label"])
        table[ludwig_config.LABEL_FEATURE] = (rows["label"].to_numpy(float) - scaling["mean"]) / scaling["std"]
        return table, None, None, scaling
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
    return table, class_weights, positive_weight, None


def tabular_records(data, rows: pd.DataFrame) -> list[dict] | None:
    """--tabular-columns' encodings (means, stds, vocabularies) from ``rows``' TRAINING rows only (split 0):
    each fold and the final model compute their own; None without the option."""
    if not getattr(data, "tabular", None):
        return None
    from image_learner.data import tabular

    return tabular.fit(rows[rows["split"] == 0], data.tabular)


def with_tabular(table: pd.DataFrame, rows: pd.DataFrame, records: list[dict] | None) -> pd.DataFrame:
    """``table`` plus the encoded tabular features of ``rows`` (same order), when the model has any."""
    if not records:
        return table
    from image_learner.data import tabular

    encoded = tabular.encode(rows, records)
    return pd.concat([table.reset_index(drop=True), encoded.reset_index(drop=True)], axis=1)


def config_for(data, rows: pd.DataFrame, opts: TrainingOptions):
    """(Ludwig table, config, class weights, positive weight, train rows, target scaling, tabular records) of
    one fit, without training."""
    table, class_weights, positive_weight, scaling = ludwig_inputs(data, rows, opts)
    records = tabular_records(data, rows)
    table = with_tabular(table, rows, records)
    train_rows = int((rows["split"] == 0).sum())
    config = ludwig_config.build_ludwig_config(opts, data.task, class_weights, positive_weight, train_rows=train_rows,
                                               tabular_records=records)
    return table, config, class_weights, positive_weight, train_rows, scaling, records


def fit(data, rows: pd.DataFrame, opts: TrainingOptions, work_dir: str, model_dir: str, ddp_workers: int = 0) -> Fit:
    """Train on ``rows``; Ludwig's files go below ``work_dir``, the model to ``model_dir``. ``ddp_workers``:
    train data-parallel in that many processes (data_parallel); 0: in this process."""
    from image_learner.training import ludwig_trainer  # imports Ludwig (slow): only once the inputs are known to be good

    table, config, class_weights, positive_weight, train_rows, scaling, records = config_for(data, rows, opts)
    os.makedirs(work_dir, exist_ok=True)
    target_std = scaling["std"] if scaling else None
    if ddp_workers:
        from image_learner.training import data_parallel

        trained = data_parallel.train(table, config, work_dir, model_dir, opts.random_seed, data.task,
                                      opts.validation_metric, ddp_workers, target_std)
    else:
        trained = ludwig_trainer.train(table, config, work_dir, model_dir, opts.random_seed, data.task,
                                       opts.validation_metric, target_std=target_std)
    return Fit(trained, config, class_weights, positive_weight, train_rows, scaling, records)


def outputs(data, model: Fit, rows: pd.DataFrame, opts: TrainingOptions, scratch_dir: str | None = None) -> np.ndarray:
    """What the fitted model says of ``rows``: class probabilities (rows x classes, in ``class_order``), or
    a regression's predicted values in the target's unit (rows x 1). With ``opts.tta`` the mean over the
    views (evaluation/tta.py), whose files are written below ``scratch_dir`` and removed after."""
    import tempfile

    from image_learner.evaluation import tta

    views = tta.views(opts.tta)
    if len(views) == 1:
        return _outputs_of(data, model, rows, opts)
    paths = rows["read_path"].tolist()
    per_view = []
    with tempfile.TemporaryDirectory(prefix="tta-", dir=scratch_dir) as views_dir:
        for i, view in enumerate(views):
            view_rows = rows.assign(read_path=tta.view_copies(paths, view, os.path.join(views_dir, str(i))))
            per_view.append(_outputs_of(data, model, view_rows, opts))
    return tta.averaged(per_view)


def _outputs_of(data, model: Fit, rows: pd.DataFrame, opts: TrainingOptions) -> np.ndarray:
    from image_learner.training import ludwig_trainer

    table = with_tabular(pd.DataFrame({ludwig_config.IMAGE_FEATURE: rows["read_path"].to_numpy()}), rows,
                         model.tabular)
    if data.task == "regression":
        scaling = model.target_scaling
        return ludwig_trainer.predict_values(model.trained.ludwig_model, table, opts.batch_size, scaling["mean"],
                                             scaling["std"])[:, None]
    return ludwig_trainer.predict_probabilities(model.trained.ludwig_model, table, class_order(data), data.task,
                                                opts.batch_size)


def binary_threshold(data, labels, p_positive, opts: TrainingOptions, rows: str = "validation rows",
                     tuned_on: str = "the validation split"):
    """The user's fixed --threshold, or the one --threshold-metric picks on the given rows (validation, or
    out-of-fold predictions; never test), with how it was set (a provenance.ThresholdChoice: "not tuned"
    when the rows are empty or of one class)."""
    negative = next(c for c in data.classes if c != data.positive_label)
    return provenance.threshold_choice(labels, p_positive, data.positive_label, negative, opts.threshold,
                                       opts.threshold_metric, rows, tuned_on)
