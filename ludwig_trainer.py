"""Training: run Ludwig on the prepared table and collect the model, its history and its predictions;
load a saved model already validated by model_archive.

This is the only module that imports Ludwig. Everything Ludwig writes goes below ``work_dir``; the
trained model directory is then moved to its final place and Ludwig's checkpoints are dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from input_utils import InputError
from ludwig_config import IMAGE_FEATURE, LABEL_FEATURE, SELECTION_METRIC

# Ludwig's names for its per-epoch metrics -> honest names (Ludwig's multiclass "accuracy" is
# torchmetrics' macro-averaged recall, i.e. balanced accuracy; "accuracy_micro" is plain accuracy).
CATEGORY_METRIC_NAMES = {"accuracy": "balanced_accuracy", "accuracy_micro": "accuracy"}
HISTORY_SPLITS = {"training": "train", "validation": "validation", "test": "test"}


@dataclass
class TrainedModel:
    ludwig_model: object
    model_dir: str
    history: pd.DataFrame
    best_epoch: int
    device: str
    seconds: float


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def history_table(train_stats: dict, task: str) -> pd.DataFrame:
    """Ludwig's nested training statistics -> one row per epoch, ``<split>_<metric>`` columns."""
    columns: dict[str, list[float]] = {}
    available = set(train_stats.keys())  # Ludwig's TrainingStats is dict-like, without .get
    for ludwig_split, split in HISTORY_SPLITS.items():
        per_feature = train_stats[ludwig_split] if ludwig_split in available else {}
        for metric, values in per_feature.get(LABEL_FEATURE, {}).items():
            name = CATEGORY_METRIC_NAMES.get(metric, metric) if task == "multiclass" else metric
            columns[f"{split}_{name}"] = [float(v) for v in values]
    n_epochs = max((len(v) for v in columns.values()), default=0)
    table = pd.DataFrame({"epoch": np.arange(1, n_epochs + 1)})
    for name, values in columns.items():
        table[name] = values + [np.nan] * (n_epochs - len(values))
    return table


def best_epoch_of(history: pd.DataFrame, task: str) -> int:
    """The epoch Ludwig kept: highest validation selection metric (first on ties, as Ludwig only
    moves on a strict improvement); the last epoch when there was no validation."""
    column = "validation_" + SELECTION_METRIC[task][1]
    if column not in history or history[column].isna().all():
        return int(history["epoch"].iloc[-1])
    return int(history.loc[history[column].idxmax(), "epoch"])


def train(table: pd.DataFrame, config: dict, work_dir: str, model_dir: str, seed: int, task: str,
          callbacks: list | None = None) -> TrainedModel:
    """Train on ``table`` (image_path, label, split columns) and move the model to ``model_dir``.

    ``callbacks``: Ludwig ``Callback`` objects (the benchmarks time epochs with one)."""
    import timm_backbone

    timm_backbone.register_with_ludwig()
    from ludwig.api import LudwigModel

    started = time.time()
    model = LudwigModel(config, logging_level=logging.INFO, callbacks=callbacks)
    results = model.train(
        dataset=table,
        output_directory=os.path.join(work_dir, "ludwig"),
        skip_save_processed_input=True,  # no HDF5 cache next to the user's data
        skip_save_progress=True,  # no per-epoch checkpoints
        skip_save_log=True,  # no TensorBoard logs
        random_seed=seed,
    )
    seconds = time.time() - started
    trained_dir = os.path.join(results.output_directory, "model")
    for leftover in ("training_checkpoints", "llm_eval_examples"):
        shutil.rmtree(os.path.join(trained_dir, leftover), ignore_errors=True)
    shutil.move(trained_dir, model_dir)
    history = history_table(results.train_stats, task)
    return TrainedModel(model, model_dir, history, best_epoch_of(history, task), describe_device(), seconds)


def predict_probabilities(model, table: pd.DataFrame, classes: list[str], task: str,
                          batch_size: int) -> np.ndarray:
    """Class probabilities (rows x classes, in ``classes`` order) for every row of ``table``."""
    predictions, _ = model.predict(dataset=table[[IMAGE_FEATURE]], batch_size=batch_size)
    if task == "binary":
        positive = predictions[f"{LABEL_FEATURE}_probabilities_True"].to_numpy(dtype=float)
        return np.column_stack([1.0 - positive, positive])
    # A class with no training row has no column (Ludwig never saw it): probability 0.
    zeros = np.zeros(len(predictions))
    return np.column_stack([
        predictions[f"{LABEL_FEATURE}_probabilities_{c}"].to_numpy(dtype=float)
        if f"{LABEL_FEATURE}_probabilities_{c}" in predictions else zeros
        for c in classes
    ])


def rendered_config(config: dict) -> dict:
    """Ludwig's full rendering of a config (every default filled in), as model_hyperparameters.json
    holds it. Prediction only renders configs our builder made, never the one from a model ZIP."""
    return json.loads(_rendered_json(json.dumps(config, sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _rendered_json(config_json: str) -> str:
    import timm_backbone

    timm_backbone.register_with_ludwig()
    from ludwig.schema.model_types.base import ModelConfig

    return json.dumps(ModelConfig.from_dict(json.loads(config_json)).to_dict())


def load_model(model_dir: str):
    """LudwigModel.load of a validated model directory (model_archive). Ludwig loads the weights strictly:
    names or shapes that do not fit the model the config builds are an InputError, not a traceback."""
    import timm_backbone
    from ludwig.api import LudwigModel

    timm_backbone.register_with_ludwig()
    try:
        return LudwigModel.load(model_dir, backend="local")
    except RuntimeError as err:
        if not str(err).startswith("Error(s) in loading state_dict"):
            raise
        raise InputError("model_weights.safetensors in the model ZIP does not fit the model its config describes: "
                         + " ".join(str(err).split())[:300]) from err
