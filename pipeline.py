"""The training run, stage by stage: inputs -> split -> Ludwig config -> training -> outputs -> report.

Everything is written below the output directory; the scratch folder (``.work-<random>``) is removed at
the end, and after a failure every file this run created is removed too, so no half-finished outputs
are ever mistaken for results.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import yaml

import dataset_prep
import devices
import ludwig_config
import metrics
import model_archive
import split_utils
import timm_backbone
from input_utils import InputError, ZipLimits, extract_images
from run_files import (SUMMARY_FILE, TOOL_VERSION, StageTimer, library_versions, log, log_skipped_members,
                       prepare_output_dir, remove_outputs, scratch_tempdir, write_json)


@dataclass
class RunRequest:
    csv_file: str
    image_zip: str
    output_dir: str
    data: dataset_prep.DataOptions
    training: ludwig_config.TrainingOptions
    zip_limits: ZipLimits = ZipLimits()
    overwrite: bool = False
    make_report: bool = True


def resolve_training_options(request: RunRequest) -> None:
    """Resolve the model alias, default image size and device in place; raise InputError on bad options."""
    opts = request.training
    choice = devices.select(opts.device, opts.mixed_precision)  # first: "cpu" hides the GPUs before CUDA starts
    opts.device, opts.mixed_precision = choice.device, "on" if choice.mixed_precision else "off"
    if opts.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {opts.epochs}")
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if not (opts.learning_rate > 0):
        raise InputError(f"--learning-rate must be above 0, got {opts.learning_rate}")
    try:
        opts.model_name = timm_backbone.resolve_model_name(opts.model_name)
    except timm_backbone.BackboneError as err:
        raise InputError(str(err)) from err
    if not opts.image_size:
        opts.image_size = timm_backbone.default_image_size(opts.model_name)
    if opts.image_size < 16 or opts.image_size > 1024:
        raise InputError(f"--image-size must be between 16 and 1024 pixels, got {opts.image_size}")
    if opts.pretrained_weights and not os.path.isfile(opts.pretrained_weights):
        raise InputError(f"--pretrained-weights file {opts.pretrained_weights!r} does not exist")
    opts.augmentation = ludwig_config.parse_augmentation(opts.augmentation)


def run(request: RunRequest) -> dict:
    """Run the whole pipeline; returns the run summary (also written as run_summary.json)."""
    total_started = time.time()
    out = os.path.abspath(request.output_dir)
    split_utils.validate_probabilities(request.data.split_probabilities)
    prepare_output_dir(out, request.overwrite)
    try:
        with scratch_tempdir(out) as work:
            resolve_training_options(request)  # first torch import: its temp files land in work too
            summary = _run_stages(request, out, work)
        summary["timings_s"]["total"] = round(time.time() - total_started, 2)
        write_json(os.path.join(out, SUMMARY_FILE), summary)
    except BaseException:  # also a stop signal turned into an exception by the CLI
        remove_outputs(out)
        raise
    return summary


def _run_stages(request: RunRequest, out: str, work: str) -> dict:
    timer = StageTimer()
    opts = request.training
    images_dir = os.path.join(work, "images")
    with timer.stage("unpacking images"):
        unpacked = extract_images(request.image_zip, images_dir, request.zip_limits)
    log_skipped_members(unpacked)
    with timer.stage("matching CSV rows and splitting"):
        data = dataset_prep.prepare(request.csv_file, images_dir, unpacked.files, request.data,
                                    converted_dir=os.path.join(work, "converted"), resize_to=opts.image_size,
                                    skipped_files=unpacked.skipped)
    for warning in data.warnings:
        log(f"WARNING: {warning}")
    log(f"task: {data.task}; {data.task_reason}")
    log(f"{len(data.table)} images, " + ("a numeric target" if data.task == "regression" else
                                         f"{len(data.classes)} classes") + f" ({data.task}); split "
        + ", ".join(f"{k} {n}" for k, n in data.dataset["split_counts"].items())
        + f"; {data.leakage['duplicate_groups']} duplicate/flip groups found")
    log(f"split: {data.split['method']}")
    _write_split_csv(data, os.path.join(out, "split.csv"))

    ludwig_table, class_weights, positive_weight, scaling = _ludwig_inputs(data, opts)
    config = ludwig_config.build_ludwig_config(opts, data.task, class_weights, positive_weight,
                                               train_rows=int((data.table["split"] == 0).sum()))
    with open(os.path.join(out, "config.yaml"), "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)

    import ludwig_trainer  # imports Ludwig (slow): only once the inputs are known to be good

    with timer.stage(f"training {opts.model_name} for up to {opts.epochs} epochs"):
        trained = ludwig_trainer.train(ludwig_table, config, work, os.path.join(out, "model"),
                                       opts.random_seed, data.task, target_std=scaling and scaling["std"])
    log(f"device: {trained.device}; best epoch {trained.best_epoch} of {len(trained.history)}")
    trained.history.to_csv(os.path.join(out, "training_history.csv"), index=False)
    threshold = None
    if data.task == "regression":
        with timer.stage("predicting every image"):
            values = ludwig_trainer.predict_values(trained.ludwig_model, ludwig_table, opts.batch_size,
                                                   scaling["mean"], scaling["std"])
        predictions = _regression_predictions_table(data, values)
    else:
        with timer.stage("predicting every image"):
            proba = ludwig_trainer.predict_probabilities(trained.ludwig_model, ludwig_table, _class_order(data),
                                                         data.task, opts.batch_size)
        threshold = _binary_threshold(data, proba) if data.task == "binary" else None
        predictions = _predictions_table(data, proba, threshold)
    predictions.to_csv(os.path.join(out, "predictions.csv"), index=False)
    with timer.stage("computing metrics (with bootstrap intervals)"):
        all_metrics = (regression_metrics_by_split(predictions, opts.random_seed) if data.task == "regression"
                       else metrics.metrics_by_split(predictions, _class_order(data), opts.random_seed))
    write_json(os.path.join(out, "metrics.json"), all_metrics)
    model_archive.write_manifest(os.path.join(out, "model"), {
        "tool_version": TOOL_VERSION, "task": data.task, "classes": _class_order(data),
        "positive_label": data.positive_label, "threshold": threshold, "image_size": opts.image_size,
        "model_name": opts.model_name, "ludwig_version": library_versions().get("ludwig"),
        "target_scaling": scaling},
        opts, class_weights, positive_weight, train_rows=int((data.table["split"] == 0).sum()))
    with timer.stage("zipping the model"):
        shutil.make_archive(os.path.join(out, "trained_model"), "zip", root_dir=out, base_dir="model")

    summary = {
        "tool": {"name": "image-learner", "version": TOOL_VERSION},
        "command_line": sys.argv,
        "inputs": {"csv_file": os.path.basename(request.csv_file), "image_zip": os.path.basename(request.image_zip)},
        "columns": data.columns, "target_column": data.columns["label"],
        "task": data.task, "task_reason": data.task_reason, "classes": data.classes,
        "target_scaling": scaling,
        "positive_label": data.positive_label, "threshold": threshold,
        "dataset": data.dataset, "split": data.split, "leakage": data.leakage, "warnings": data.warnings,
        "model": {"name": opts.model_name, "pretrained": opts.use_pretrained,
                  "weights_source": _weights_source(opts), "fine_tune": opts.fine_tune,
                  "image_size": opts.image_size},
        "training": {**{k: v for k, v in asdict(opts).items() if k not in ("model_name", "image_size")},
                     "class_weights_used": class_weights or positive_weight,
                     "epochs_run": len(trained.history), "best_epoch": trained.best_epoch,
                     "best_epoch_chosen_by": _chosen_by(data.task)},
        "device": trained.device, "versions": library_versions(), "metrics": all_metrics,
        "timings_s": timer.seconds,
    }
    write_json(os.path.join(out, SUMMARY_FILE), summary)
    if request.make_report:
        import report_builder

        with timer.stage("writing the report"):
            report_builder.build_report(out, images_dir=images_dir, ludwig_model=trained.ludwig_model)
    return summary


def regression_metrics_by_split(predictions: pd.DataFrame, seed: int, splits=split_utils.SPLIT_NAMES) -> dict:
    """metrics.json of a regression: regression_metrics.metrics_by_split (contract of issue 14)."""
    try:
        import regression_metrics
    except ImportError:
        # TODO(integrator): regression_metrics.py comes from h-regreport; drop this stand-in after the merge.
        found = {}
        for split in splits:
            part = predictions[predictions["split"] == split]
            if len(part):
                error = part["predicted_value"].to_numpy(float) - part["true_value"].to_numpy(float)
                found[split] = {"n": int(len(part)), "mae": float(np.abs(error).mean()),
                                "rmse": float(np.sqrt((error ** 2).mean()))}
        return found
    return regression_metrics.metrics_by_split(predictions, seed, splits)


def _chosen_by(task: str) -> str:
    return (("highest" if ludwig_config.HIGHER_IS_BETTER[task] else "lowest") + " validation "
            + ludwig_config.SELECTION_METRIC[task][1].replace("_", " "))


def _class_order(data: dataset_prep.PreparedData) -> list[str]:
    """Probability columns: sorted class names; for binary, negative first then positive."""
    if data.task == "binary":
        return [c for c in data.classes if c != data.positive_label] + [data.positive_label]
    return data.classes


def _ludwig_inputs(data, opts):
    table = pd.DataFrame({
        ludwig_config.IMAGE_FEATURE: data.table["read_path"].to_numpy(),
        ludwig_config.LABEL_FEATURE: data.table["label"].to_numpy(),
        ludwig_config.SPLIT_COLUMN: data.table["split"].to_numpy(),
    })
    if data.task == "binary":
        table[ludwig_config.LABEL_FEATURE] = table[ludwig_config.LABEL_FEATURE] == data.positive_label
    class_weights = positive_weight = scaling = None
    if data.task == "regression":
        if opts.class_weights != "none":
            raise InputError(f"--class-weights {opts.class_weights} is for classification; label column "
                             f"{data.columns['label']!r} makes a regression ({data.task_reason})")
        scaling = target_scaling(data.table.loc[data.table["split"] == 0, "label"])
        table[ludwig_config.LABEL_FEATURE] = (data.table["label"].to_numpy(float) - scaling["mean"]) / scaling["std"]
        return table, None, None, scaling
    if opts.class_weights == "balanced":
        train_labels = data.table.loc[data.table["split"] == 0, "label"]
        weights = ludwig_config.balanced_class_weights(train_labels)
        if data.task == "binary":
            negative = next(c for c in data.classes if c != data.positive_label)
            positive_weight = weights.get(data.positive_label, 1.0) / weights.get(negative, 1.0)
        else:
            class_weights = {c: weights.get(c, 1.0) for c in data.classes}
    return table, class_weights, positive_weight, scaling


def target_scaling(train_values) -> dict:
    """Mean and standard deviation of the training rows' target: Ludwig trains on the z-scored target
    (from training rows only, so validation and test values do not shape training). A constant training
    target keeps a scale of 1."""
    values = np.asarray(train_values, dtype=float)
    std = float(values.std())
    return {"mean": float(values.mean()), "std": std if std > 0 else 1.0}


def _regression_predictions_table(data, values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame({
        "image": data.table["image"], "image_file": data.table["image_file"],
        "split": np.asarray(split_utils.SPLIT_NAMES)[data.table["split"].to_numpy()],
        "true_value": data.table["label"].to_numpy(float), "predicted_value": values,
    })
    if data.columns["sample_id"]:
        table["sample_id"] = data.table["sample_id"]
    table["duplicate_group"] = data.table["duplicate_group"]
    return table


def _binary_threshold(data, proba: np.ndarray) -> float:
    """Chosen on validation (never test), then used for every split, table and plot."""
    validation = data.table["split"].to_numpy() == 1
    is_positive = data.table["label"].to_numpy() == data.positive_label
    return metrics.choose_threshold(is_positive[validation], proba[validation, 1])


def _predictions_table(data, proba: np.ndarray, threshold: float | None) -> pd.DataFrame:
    order = _class_order(data)
    if threshold is not None:
        predicted = np.where(proba[:, 1] >= threshold, order[1], order[0])
    else:
        predicted = np.asarray(order)[proba.argmax(axis=1)]
    table = pd.DataFrame({
        "image": data.table["image"], "image_file": data.table["image_file"],
        "split": np.asarray(split_utils.SPLIT_NAMES)[data.table["split"].to_numpy()],
        "true_label": data.table["label"], "predicted_label": predicted,
    })
    for k, cls in enumerate(order):
        table[f"prob_{cls}"] = proba[:, k]
    if data.columns["sample_id"]:
        table["sample_id"] = data.table["sample_id"]
    table["duplicate_group"] = data.table["duplicate_group"]
    return table


def _write_split_csv(data, path: str) -> None:
    table = data.table.drop(columns=["read_path"])  # a scratch path, gone after the run
    table["split"] = np.asarray(split_utils.SPLIT_NAMES)[table["split"].to_numpy()]
    table.to_csv(path, index=False)


def _weights_source(opts) -> str:
    if not opts.use_pretrained:
        return "none (random initialisation)"
    if opts.pretrained_weights:
        return f"local file {os.path.basename(opts.pretrained_weights)}"
    return "timm / Hugging Face hub" + (" (offline cache)" if os.environ.get("HF_HUB_OFFLINE") else "")
