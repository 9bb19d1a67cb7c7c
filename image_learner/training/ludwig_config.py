"""Ludwig config: the user's options -> one declarative Ludwig config dict (pure; no Ludwig import).

The training table handed to Ludwig always has the columns ``image_path`` (absolute path), ``label``
(class name, or True/False for a binary task) and ``split`` (0/1/2), whatever the user's CSV calls
them, so odd column names never reach Ludwig.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

import numpy as np

from image_learner.errors import InputError
from image_learner.training.image_augmentation import EACH_IMAGE
from image_learner.training.timm_backbone import ENCODER_TYPE

IMAGE_FEATURE = "image_path"
LABEL_FEATURE = "label"
SPLIT_COLUMN = "split"

# Ludwig's image augmentations (ludwig/features/image_feature.py), with its own default strengths: each draws
# one coin per batch (the whole batch flipped or none of it); then ours, drawn per image (image_augmentation.py).
AUGMENTATIONS = (
    "random_horizontal_flip",
    "random_vertical_flip",
    "random_rotate",
    "random_blur",
    "random_brightness",
    "random_contrast",
    *EACH_IMAGE,
)


@dataclass
class TrainingOptions:
    """Everything the user chose that shapes the model and its training."""

    model_name: str
    image_size: int
    use_pretrained: bool = True
    fine_tune: bool = True
    pretrained_weights: str | None = None
    epochs: int = 30
    early_stop: int = 5  # epochs without validation improvement; 0 disables
    batch_size: int = 32
    learning_rate: float = 0.001
    random_seed: int = 42
    augmentation: list[str] = field(default_factory=list)
    class_weights: str = "none"  # "none" | "balanced"
    lr_schedule: str = "constant"  # see LR_SCHEDULES
    preprocessing_workers: int = 1
    # Ludwig's image "mode": "lazy" decodes each batch as it is needed (memory bounded by the batch),
    # "eager" decodes every image once up front and keeps them all in memory (float32).
    preprocessing_mode: str = "lazy"
    # devices.DEVICES / devices.MIXED_PRECISION; pipeline resolves "auto" to what this machine runs.
    device: str = "auto"
    mixed_precision: str = "auto"
    # VALIDATION_METRICS; pipeline resolves "auto" to the task's DEFAULT_VALIDATION_METRIC.
    validation_metric: str = "auto"
    # binary tasks: metrics.THRESHOLD_POLICIES, tuned on the validation split, unless ``threshold`` is fixed
    threshold_metric: str = "youden"
    threshold: float | None = None
    # evaluation/tta.MODES: the views whose probabilities are averaged, in evaluation and in predict
    tta: str = "none"
    # multiclass: evaluation/class_decision.RULES, "balanced" tuned on the validation split
    class_decision: str = "argmax"


# The validation metric that picks the kept epoch and drives early stopping, per task: the user's name ->
# (Ludwig's metric name, its training_history.csv column, higher is better). Ludwig computes each of them per
# epoch on the validation split (its metric registry, ludwig/modules/metric_modules.py); "macro_f1" and the
# binary "balanced_accuracy" are registered by ludwig_metrics.py, as Ludwig has none. Ludwig's multiclass
# "accuracy" is macro recall, i.e. balanced accuracy (the ISIC challenge's HAM10000 metric), its
# "accuracy_micro" plain accuracy. Binary accuracy, balanced accuracy and macro F1 are at Ludwig's threshold
# 0.5 (the decision threshold is tuned only after training), hence ROC-AUC as the binary default. Not the loss
# by default: on small validation sets the loss is lowest before the model stops predicting only the big
# classes (bench/tool_vs_loop.py).
_CLASSIFICATION = {"accuracy": ("accuracy", "accuracy", True), "roc_auc": ("roc_auc", "roc_auc", True),
                   "balanced_accuracy": ("balanced_accuracy", "balanced_accuracy", True),
                   "macro_f1": ("macro_f1", "macro_f1", True), "loss": ("loss", "loss", False)}
VALIDATION_METRICS = {
    "multiclass": {**_CLASSIFICATION, "balanced_accuracy": ("accuracy", "balanced_accuracy", True),
                   "accuracy": ("accuracy_micro", "accuracy", True)},
    "binary": dict(_CLASSIFICATION),
    "regression": {"mae": ("mean_absolute_error", "mean_absolute_error", False),
                   "rmse": ("root_mean_squared_error", "root_mean_squared_error", False),
                   "r2": ("r2", "r2", True), "loss": ("loss", "loss", False)},
}
DEFAULT_VALIDATION_METRIC = {"binary": "roc_auc", "multiclass": "balanced_accuracy", "regression": "mae"}
ALL_VALIDATION_METRICS = tuple(dict.fromkeys(n for task in VALIDATION_METRICS.values() for n in task))


def resolve_validation_metric(name: str, task: str) -> str:
    """``--validation-metric`` for ``task``: "auto" -> the task's default; a name that does not apply to the
    task is an InputError listing the ones that do (never a silent fallback)."""
    if name == "auto":
        return DEFAULT_VALIDATION_METRIC[task]
    valid = VALIDATION_METRICS[task]
    if name not in valid:
        raise InputError(f"--validation-metric {name!r} does not apply to a {task} task; choose from auto, "
                         + ", ".join(valid))
    return name


TASKS = ("binary", "multiclass", "regression")

# "cosine": one epoch of linear warm-up to the learning rate, then cosine decay to 0 by the last epoch.
LR_SCHEDULES = ("constant", "cosine")


def parse_augmentation(value: str | list[str] | None) -> list[str]:
    """``"random_horizontal_flip,random_rotate"`` -> list; unknown names are an error listing the valid ones."""
    if not value:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    names = [v.strip() for v in items if v.strip() and v.strip().lower() != "none"]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise InputError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


# What a trained model keeps of --pretrained-weights: "<file name> sha256:<hex>", never the path the trainer
# typed (a model ZIP is meant to be shared). A saved model carries the backbone's weights, so predict never
# reads the file again.
WEIGHTS_RECORD = re.compile(r"[^/\\\x00-\x1f]+ sha256:[0-9a-f]{64}")


def pretrained_weights_record(path: str) -> str:
    """The file's name and SHA-256 (which file the backbone started from, checkable by anyone who has it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{os.path.basename(path)} sha256:{digest.hexdigest()}"


def balanced_class_weights(train_labels) -> dict[str, float]:
    """n_samples / (n_classes * n_c) per class, as scikit-learn's ``class_weight='balanced'``."""
    classes, counts = np.unique(np.asarray(train_labels).astype(str), return_counts=True)
    total = counts.sum()
    return {c: float(total / (len(classes) * n)) for c, n in zip(classes, counts)}


def learning_rate_scheduler(schedule: str, epochs: int, train_rows: int, batch_size: int) -> dict:
    """Ludwig's ``learning_rate_scheduler`` section for ``schedule`` (one of LR_SCHEDULES)."""
    if schedule == "constant":
        return {"decay": None}
    if schedule != "cosine":
        raise InputError(f"unknown learning-rate schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    steps_per_epoch = max(1, -(-train_rows // batch_size))
    # Ludwig's cosine restarts every t_0 steps (default: every epoch); one period over the epochs left
    # after warm-up makes it a single decay to 0.
    warmup_epochs = 1 if epochs > 1 else 0
    return {"decay": "cosine", "warmup_evaluations": warmup_epochs,
            "t_0": max(1, (epochs - warmup_epochs) * steps_per_epoch), "eta_min": 0.0}


def build_ludwig_config(options: TrainingOptions, task: str, class_weights: dict[str, float] | None = None,
                        positive_weight: float | None = None, train_rows: int = 0,
                        tabular_records: list[dict] | None = None) -> dict:
    """The Ludwig config for ``task`` ("multiclass", "binary" or "regression").

    ``class_weights`` (multiclass) and ``positive_weight`` (binary) come from the train split when the
    user asked for balanced weights; ``train_rows`` (the train split's size) sets the schedule's length;
    ``tabular_records``: --tabular-columns' encodings (data/tabular.py), one input feature each after the image.
    """
    from image_learner.data import tabular

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if task == "regression" and (class_weights or positive_weight is not None or options.class_weights != "none"):
        raise InputError("--class-weights balanced is for classification; a regression target has no classes")
    encoder = {
        "type": ENCODER_TYPE,
        "model_name": options.model_name,
        "use_pretrained": options.use_pretrained,
        "trainable": options.fine_tune,
        "image_size": options.image_size,
    }
    if options.pretrained_weights:
        encoder["pretrained_weights"] = options.pretrained_weights
    image_feature = {
        "name": IMAGE_FEATURE,
        "type": "image",
        "encoder": encoder,
        "preprocessing": {
            "height": options.image_size,
            "width": options.image_size,
            "num_channels": 3,  # grey/RGBA/palette images are converted, the backbone wants RGB
            "resize_method": "interpolate",
            "infer_image_dimensions": False,
            "standardize_image": None,  # the encoder normalises with its backbone's own statistics
            "in_memory": True,
            "mode": options.preprocessing_mode,
            "num_processes": options.preprocessing_workers,
        },
    }
    if options.augmentation:
        image_feature["augmentation"] = [{"type": name} for name in options.augmentation]
        # Same seed, same numbers: in "lazy" mode Ludwig's batcher decodes and augments the next batches in a
        # background thread (prefetch_size None -> 4), and the augmentations draw from torch's global RNG. The
        # thread starts when the batcher is made and is stopped by set_epoch(0) after however many batches the
        # machine's load let it prepare, so the RNG state training starts from depended on timing (and any
        # draw in the training step would interleave with it). 0 decodes and augments each batch in the
        # training thread, in order. On a GPU that overlap matters (BENCHMARKS.md, "GPU, measured"): our
        # trainer reads the batches ahead itself, in order, each epoch (fast_trainer.BatchesAhead).
        image_feature["preprocessing"]["prefetch_size"] = 0

    if task == "binary":
        output = {"name": LABEL_FEATURE, "type": "binary"}
        if positive_weight is not None:
            output["loss"] = {"type": "binary_weighted_cross_entropy", "positive_class_weight": positive_weight}
    elif task == "regression":
        # Ludwig sees the target already z-scored with the *training* rows' mean and standard deviation
        # (pipeline; the manifest keeps them to map predictions back to the target's unit). Ludwig's own
        # "zscore" would take them from every row it is given, test rows included.
        output = {"name": LABEL_FEATURE, "type": "number", "preprocessing": {"normalization": None},
                  "loss": {"type": "mean_squared_error"}}
    else:
        output = {"name": LABEL_FEATURE, "type": "category", "top_k": 3}
        if class_weights:
            output["loss"] = {"type": "softmax_cross_entropy", "class_weights": class_weights}

    return {
        "model_type": "ecd",
        "input_features": [image_feature, *tabular.ludwig_features(tabular_records)],
        "output_features": [output],
        "combiner": {"type": "concat"},
        "preprocessing": {"split": {"type": "fixed", "column": SPLIT_COLUMN}},
        "trainer": {
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            # Ludwig would otherwise search an evaluation batch size by trial runs: slower, and its
            # batch of 1 breaks BatchNorm on tiny images.
            "eval_batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "learning_rate_scheduler": learning_rate_scheduler(options.lr_schedule, options.epochs, train_rows,
                                                               options.batch_size),
            "early_stop": options.early_stop if options.early_stop > 0 else -1,
            "validation_field": LABEL_FEATURE,
            "validation_metric": VALIDATION_METRICS[task][resolve_validation_metric(options.validation_metric,
                                                                                    task)][0],
            # CUDA autocast + loss scaling in Ludwig (devices.py picks bfloat16 where the GPU has it).
            "use_mixed_precision": options.mixed_precision == "on",
        },
        "backend": {"type": "local"},
    }
