"""Training: run Ludwig on the prepared table and collect the model, its history and its predictions;
load a saved model already validated by model_archive.

This is the only module that imports Ludwig. Everything Ludwig writes goes below ``work_dir``; the
trained model directory is then moved to its final place and Ludwig's checkpoints are dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from image_learner import console
from image_learner.training import devices
from image_learner.errors import InputError
from image_learner.training.ludwig_config import IMAGE_FEATURE, LABEL_FEATURE, VALIDATION_METRICS  # noqa: F401 (tests)
from image_learner.run_files import log

# Ludwig's names for its per-epoch metrics -> honest names (Ludwig's multiclass "accuracy" is
# torchmetrics' macro-averaged recall, i.e. balanced accuracy; "accuracy_micro" is plain accuracy).
CATEGORY_METRIC_NAMES = {"accuracy": "balanced_accuracy", "accuracy_micro": "accuracy"}
HISTORY_SPLITS = {"training": "train", "validation": "validation", "test": "test"}
PROGRESS_STEPS = 10  # prediction logs its progress at most this many times
# Each model.predict call repeats Ludwig's per-call set-up (dataset, batcher): a chunk is at least this many batches.
MIN_PREDICT_BATCHES = 16

# Ludwig imports bitsandbytes, whose CPU backend warns at import time, on CPUs with AVX512-BF16, that its
# optional 4-bit kernel package ("kernels") is missing. This tool never quantises (model_archive refuses
# quantization configs), so that line only confuses users: its logger shows errors only. Set here, before
# any Ludwig import (every path to Ludwig goes through this module).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass
class TrainedModel:
    ludwig_model: object
    model_dir: str
    history: pd.DataFrame
    best_epoch: int
    device: str  # what ran, with its precision: "cuda (NVIDIA H100 …), bfloat16 mixed precision"
    seconds: float


def _image_size(config: dict) -> int | None:
    try:
        return int(config["input_features"][0]["preprocessing"]["height"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _out_of_memory(stage: str, batch_size: int, image_size: int | None,
                   suggest_mixed_precision: bool) -> devices.OutOfMemory:
    return devices.OutOfMemory(devices.oom_message(stage, devices.describe(), batch_size, image_size,
                                                   suggest_mixed_precision))


# Regression metrics Ludwig computes on the z-scored target, and the power of the standard deviation that
# brings them back to the target's unit (r2 has none). Percentage errors of z-scores mean nothing: dropped.
_SCALED_METRICS = {"mean_absolute_error": 1, "root_mean_squared_error": 1, "mean_squared_error": 2, "loss": 2,
                   "r2": 0}


def history_table(train_stats: dict, task: str, target_std: float | None = None) -> pd.DataFrame:
    """Ludwig's nested training statistics -> one row per epoch, ``<split>_<metric>`` columns.

    ``target_std``: a regression target's training standard deviation; Ludwig saw the target z-scored,
    so its errors (and the mean squared error loss) are put back into the target's unit."""
    columns: dict[str, list[float]] = {}
    available = set(train_stats.keys())  # Ludwig's TrainingStats is dict-like, without .get
    for ludwig_split, split in HISTORY_SPLITS.items():
        per_feature = train_stats[ludwig_split] if ludwig_split in available else {}
        for metric, values in per_feature.get(LABEL_FEATURE, {}).items():
            name = CATEGORY_METRIC_NAMES.get(metric, metric) if task == "multiclass" else metric
            if target_std and metric not in _SCALED_METRICS:
                continue
            scale = target_std ** _SCALED_METRICS[metric] if target_std else 1.0
            columns[f"{split}_{name}"] = [float(v) * scale for v in values]
    n_epochs = max((len(v) for v in columns.values()), default=0)
    table = pd.DataFrame({"epoch": np.arange(1, n_epochs + 1)})
    for name, values in columns.items():
        table[name] = values + [np.nan] * (n_epochs - len(values))
    return table


def best_epoch_of(history: pd.DataFrame, task: str, validation_metric: str) -> int:
    """The epoch Ludwig kept: best validation ``validation_metric`` (a VALIDATION_METRICS name), highest or
    lowest as the metric wants, first on ties (Ludwig only moves on a strict improvement); the last epoch
    when there was no validation."""
    _, column, higher_is_better = VALIDATION_METRICS[task][validation_metric]
    column = "validation_" + column
    if column not in history or history[column].isna().all():
        return int(history["epoch"].iloc[-1])
    values = history[column]
    return int(history.loc[values.idxmax() if higher_is_better else values.idxmin(), "epoch"])


def register_with_ludwig() -> None:
    """Our encoder, metrics, per-image augmentations and ECD trainer (fast_trainer) in Ludwig's registries:
    before any config naming them is built or loaded, or a model trained."""
    from image_learner.training import fast_trainer
    from image_learner.training import image_augmentation
    from image_learner.training import ludwig_metrics
    from image_learner.training import timm_backbone

    timm_backbone.register_with_ludwig()
    image_augmentation.register_with_ludwig()
    ludwig_metrics.register_with_ludwig()
    fast_trainer.register_with_ludwig()


def train(table: pd.DataFrame, config: dict, work_dir: str, model_dir: str, seed: int, task: str,
          validation_metric: str, callbacks: list | None = None, backend=None,
          target_std: float | None = None) -> TrainedModel | None:
    """Train on ``table`` (image_path, label, split columns) and move the model to ``model_dir``.

    ``validation_metric``: the VALIDATION_METRICS name the config's trainer uses (finds the kept epoch in
    the history); ``callbacks``: Ludwig ``Callback`` objects (the benchmarks time epochs with one);
    ``backend``: a Ludwig backend object (data_parallel's); then only its coordinator (rank 0) saves the
    model and gets a result, the other ranks get None; ``target_std``: see history_table."""
    register_with_ludwig()
    from ludwig.api import LudwigModel

    started = time.time()
    trainer = config["trainer"]
    # Ludwig drops mixed precision on a CPU by itself; on a GPU, the dtype its autocast will use.
    amp_dtype = devices.autocast_dtype_name() if trainer.get("use_mixed_precision") and _cuda() else None
    epoch_log = _epoch_log(trainer["epochs"], task, validation_metric, target_std)
    model = LudwigModel(config, logging_level=logging.INFO,
                        callbacks=[_keep_sigint_handler(), epoch_log, *(callbacks or [])], backend=backend)
    _progress_bars_only_on_a_terminal()
    try:
        with devices.autocast_default(amp_dtype):
            results = model.train(
                dataset=table,
                output_directory=os.path.join(work_dir, "ludwig"),
                skip_save_processed_input=True,  # no HDF5 cache next to the user's data
                skip_save_progress=True,  # no per-epoch checkpoints
                skip_save_log=True,  # no TensorBoard logs
                random_seed=seed,
            )
    except (MemoryError, RuntimeError) as err:
        if devices.is_out_of_memory(err):
            raise _out_of_memory("training", trainer["batch_size"], _image_size(config), not amp_dtype) from err
        if is_divergence(err):
            raise InputError(divergence_message(trainer.get("learning_rate"))) from err
        raise
    seconds = time.time() - started
    if not model.backend.is_coordinator():
        return None
    trained_dir = os.path.join(results.output_directory, "model")
    for leftover in ("training_checkpoints", "llm_eval_examples"):
        shutil.rmtree(os.path.join(trained_dir, leftover), ignore_errors=True)
    shutil.move(trained_dir, model_dir)
    history = history_table(results.train_stats, task, target_std)
    return TrainedModel(model, model_dir, history, best_epoch_of(history, task, validation_metric),
                        devices.describe(amp_dtype), seconds)


def is_divergence(err: BaseException) -> bool:
    """Ludwig's error when the weights turned NaN or infinite before any epoch could be kept (Ludwig 0.17:
    "Training ran into an error. No checkpoint was saved. ... NaN or Inf values in the model weights ...")."""
    return isinstance(err, RuntimeError) and "NaN or Inf values in the model weights" in str(err)


def divergence_message(learning_rate) -> str:
    """One line for a diverged training: the cause and the learning rate to lower."""
    rate = f"--learning-rate {learning_rate:g}" if isinstance(learning_rate, (int, float)) else "the learning rate"
    return (f"training diverged: the model's weights became NaN or infinite before any epoch could be kept "
            f"({rate}); lower --learning-rate (e.g. 1e-4)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _keep_sigint_handler():
    """A Ludwig callback that puts back the SIGINT handler Ludwig replaces during training: on Ctrl-C,
    Ludwig would end training early and save the model as if training had finished, while the run should
    stop and remove its outputs, as on SIGTERM (image_learner_cli.signals_as_exceptions)."""
    from ludwig.callbacks import Callback

    class KeepSigintHandler(Callback):
        def __init__(self):
            self.handler = signal.getsignal(signal.SIGINT)

        def on_trainer_train_setup(self, trainer, save_path, is_coordinator, **kwargs):
            if threading.current_thread() is threading.main_thread() and self.handler is not None:
                signal.signal(signal.SIGINT, self.handler)

    return KeepSigintHandler()


def _progress_bars_only_on_a_terminal() -> None:
    """Ludwig's tqdm bars redraw a line with carriage returns: with --verbose on a console that is not a
    terminal (Galaxy's stdout, a file) every redraw would stay, so they are off there and the epoch lines
    carry the progress; otherwise they go to the log file (or the terminal). Ludwig's own switch, which
    LudwigModel() has just set."""
    from ludwig.globals import set_disable_progressbar

    set_disable_progressbar(not console.is_redirected() and not console.console_is_terminal())


def _epoch_log(epochs: int, task: str, validation_metric: str, target_std: float | None):
    """A Ludwig callback that logs one line per epoch (console.epoch_line) on the coordinator: train loss,
    the validation metric that picks the kept epoch, the best so far, time and what is left at most."""
    from ludwig.callbacks import Callback

    ludwig_name, column, _ = VALIDATION_METRICS[task][validation_metric]

    def scaled(name: str, value):  # a regression's errors in the target's unit, as in history_table
        if value is None or not target_std:
            return value
        return value * target_std ** _SCALED_METRICS.get(name, 0)

    def last(metrics: dict, name: str):
        values = metrics.get(LABEL_FEATURE, {}).get(name) or []
        return float(values[-1][-1]) if values else None

    class EpochLog(Callback):
        def __init__(self):
            self.started = time.time()

        def on_trainer_train_setup(self, trainer, save_path, is_coordinator, **kwargs):
            self.started = time.time()  # after Ludwig's preprocessing: the epochs' time only

        def on_epoch_end(self, trainer, progress_tracker, save_path, **kwargs):
            if not trainer.is_coordinator():
                return
            value = last(progress_tracker.validation_metrics, ludwig_name)
            best_epoch = progress_tracker.best_eval_metric_epoch if value is not None else None
            log(console.epoch_line(
                progress_tracker.epoch, epochs, scaled("loss", last(progress_tracker.train_metrics, "loss")),
                column, scaled(ludwig_name, value), scaled(ludwig_name, progress_tracker.best_eval_metric_value),
                best_epoch, time.time() - self.started))

    return EpochLog()


def _predict_chunks(model, table: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Ludwig's predictions for every row of ``table``, in at most ten chunks of whole batches (at least
    MIN_PREDICT_BATCHES batches each), logging the progress after each: Ludwig's own bar is silent for a
    loaded model."""
    chunk = max(MIN_PREDICT_BATCHES, math.ceil(len(table) / PROGRESS_STEPS / batch_size)) * batch_size
    started, parts = time.time(), []
    with warnings.catch_warnings():
        # Prediction tables have no split column; Ludwig warns about that on every call.
        warnings.filterwarnings("ignore", message="column: 'split' is required by the dataset splitter")
        for start in range(0, len(table), chunk):
            try:
                # the image and any tabular features (--tabular-columns), never a label or split
                part, _ = model.predict(dataset=table.drop(columns=[LABEL_FEATURE, "split"], errors="ignore")
                                        .iloc[start:start + chunk],
                                        batch_size=batch_size)
            except (MemoryError, RuntimeError) as err:
                if devices.is_out_of_memory(err):
                    raise _out_of_memory("predicting", batch_size, _image_size(model.config), False) from err
                raise
            parts.append(part)
            done = min(start + chunk, len(table))
            log(f"predicted {done} of {len(table)} images ({done / len(table):.0%}) in {time.time() - started:.1f} s")
    return pd.concat(parts, ignore_index=True)


def predict_probabilities(model, table: pd.DataFrame, classes: list[str], task: str,
                          batch_size: int) -> np.ndarray:
    """Class probabilities (rows x classes, in ``classes`` order) for every row of ``table``."""
    if table.empty:
        return np.zeros((0, len(classes)))
    predictions = _predict_chunks(model, table, batch_size)
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


def predict_values(model, table: pd.DataFrame, batch_size: int, mean: float, std: float) -> np.ndarray:
    """A regression model's predictions for every row of ``table``, in the target's unit: Ludwig predicts
    the z-scored target (``label_predictions``), mapped back with the training ``mean`` and ``std``."""
    if table.empty:
        return np.zeros(0)
    predictions = _predict_chunks(model, table, batch_size)
    return predictions[f"{LABEL_FEATURE}_predictions"].to_numpy(dtype=float) * std + mean


def rendered_config(config: dict) -> dict:
    """Ludwig's full rendering of a config (every default filled in), as model_hyperparameters.json
    holds it. Prediction only renders configs our builder made, never the one from a model ZIP."""
    return json.loads(_rendered_json(json.dumps(config, sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _rendered_json(config_json: str) -> str:
    register_with_ludwig()
    from ludwig.schema.model_types.base import ModelConfig

    return json.dumps(ModelConfig.from_dict(json.loads(config_json)).to_dict())


def load_model(model_dir: str, source: str = "the model"):
    """LudwigModel.load of a validated model directory (model_archive). A model that passed our checks but
    that Ludwig still cannot load (weights that do not fit the model the config builds, a tensor type it
    cannot read, ...) is an InputError of one line naming ``source`` (the model file), not a traceback;
    running out of memory stays what it is."""
    register_with_ludwig()
    try:
        return _load_validating_once(model_dir)
    except MemoryError:
        raise
    except Exception as err:  # anything Ludwig raises on a validated file is that file's fault
        if devices.is_out_of_memory(err):
            raise
        detail = " ".join(str(err).split())[:300]
        if isinstance(err, RuntimeError) and detail.startswith("Error(s) in loading state_dict"):
            raise InputError(f"{source}: model_weights.safetensors does not fit the model its config describes: "
                             + detail) from err
        raise InputError(f"{source}: it passes Image Learner's checks but Ludwig cannot load it "
                         f"({type(err).__name__}: {detail})") from err


def _with_vector_widths(config_object, config: dict):
    """A vector input's width (--tabular-columns' one-hot categories) on its passthrough encoder, as Ludwig's
    training sets it (VectorInputFeature.update_config_with_metadata). The passthrough encoder's schema has no
    such field, so a config rebuilt from the saved file would give every vector width 1 and the head would not
    fit its weights; the saved width was checked against the manifest's vocabulary (model_archive)."""
    for feature, saved in zip(config_object.input_features, config["input_features"]):
        if saved.get("type") == "vector":
            feature.encoder.input_size = saved["encoder"]["input_size"]
    return config_object


def _load_validating_once(model_dir: str):
    """LudwigModel.load's steps, with the saved config schema-validated once (by LudwigModel's constructor)
    instead of twice (LudwigModel.load validates it, then hands the rendering to the constructor, which
    validates it again)."""
    from ludwig.api import LudwigModel
    from ludwig.globals import MODEL_HYPERPARAMETERS_FILE_NAME, TRAIN_SET_METADATA_FILE_NAME
    from ludwig.utils.data_utils import load_json
    from ludwig.data.preprocessing import load_metadata
    from ludwig.utils.misc_utils import set_saved_weights_in_checkpoint_flag

    saved = load_json(os.path.join(model_dir, MODEL_HYPERPARAMETERS_FILE_NAME))
    model = LudwigModel(saved, backend="local")
    _with_vector_widths(model.config_obj, saved)
    set_saved_weights_in_checkpoint_flag(model.config_obj)
    model._get_or_create_model(model.config_obj)
    model.load_weights(model_dir)
    model.training_set_metadata = load_metadata(os.path.join(model_dir, TRAIN_SET_METADATA_FILE_NAME))
    return model
