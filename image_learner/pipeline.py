"""The training run, stage by stage: inputs -> split -> Ludwig config -> training -> outputs -> report.

Everything is written below the output directory; the scratch folder (``.work-<random>``) is removed at
the end, and after a failure every file this run created is removed too, so no half-finished outputs
are ever mistaken for results.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import yaml

from image_learner.training import cross_validation
from image_learner.training import data_parallel
from image_learner.data import dataset_prep
from image_learner.training import devices
from image_learner.evaluation import evaluation
from image_learner.training import ludwig_config
from image_learner.evaluation import metrics
from image_learner.evaluation import trust
from image_learner.model import model_manifest
from image_learner.training import model_fit
import split_utils
from image_learner.training import timm_backbone
from image_learner.data.input_utils import InputError, ZipLimits, extract_images, write_output_csv
from image_learner.run_files import (SUMMARY_FILE, TOOL_VERSION, StageTimer, library_versions, log, log_skipped_members,
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
    distributed: str = "none"  # data_parallel.DISTRIBUTED: "ddp" trains in num_workers processes
    num_workers: int = 1
    coverage: float = trust.DEFAULT_COVERAGE  # conformal prediction sets / intervals (0: off)


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
    if opts.validation_metric not in ("auto", *ludwig_config.ALL_VALIDATION_METRICS):
        raise InputError(f"--validation-metric {opts.validation_metric!r} is unknown; choose from auto, "
                         + ", ".join(ludwig_config.ALL_VALIDATION_METRICS))
    data_parallel.check_options(request.distributed, request.num_workers, opts.lr_schedule, opts.device)
    try:
        request.coverage = trust.check_coverage(request.coverage)
    except ValueError as err:
        raise InputError(str(err)) from err
    if opts.threshold_metric not in metrics.THRESHOLD_POLICIES:
        raise InputError(f"--threshold-metric {opts.threshold_metric!r} is unknown; choose from "
                         + ", ".join(metrics.THRESHOLD_POLICIES))
    if opts.threshold is not None and not 0 < opts.threshold < 1:
        raise InputError(f"--threshold must be between 0 and 1 (exclusive), got {opts.threshold}")


def resolve_task_options(opts: ludwig_config.TrainingOptions, task: str) -> None:
    """Once the task is known: "auto" -> the task's validation metric; a fixed --threshold on a task without
    one, or class weights for a regression, is an InputError (a --threshold-metric is only noted: the Galaxy
    form always sends one)."""
    opts.validation_metric = ludwig_config.resolve_validation_metric(opts.validation_metric, task)
    if task == "regression" and opts.class_weights != "none":
        raise InputError(f"--class-weights {opts.class_weights} is for classification; this is a regression task "
                         "(a number to predict has no classes to weigh)")
    if task != "binary":
        if opts.threshold is not None:
            raise InputError(f"--threshold applies to binary tasks only; this is a {task} task")
        if opts.threshold_metric != "youden":
            log(f"note: --threshold-metric {opts.threshold_metric} ignored: a {task} task has no decision threshold")
        opts.threshold_metric = "youden"


def run(request: RunRequest) -> dict:
    """Run the whole pipeline; returns the run summary (also written as run_summary.json)."""
    total_started = time.time()
    out = os.path.abspath(request.output_dir)
    split_utils.validate_probabilities(request.data.split_probabilities)
    if request.data.cross_validation and request.data.cross_validation < 2:
        raise InputError(f"--cross-validation needs at least 2 folds (0: off), got {request.data.cross_validation}")
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
    log(f"task: {data.task}; {data.task_reason}")
    resolve_task_options(opts, data.task)
    for warning in data.warnings:
        log(f"WARNING: {warning}")
    log(f"{len(data.table)} images, " + ("a numeric target" if data.task == "regression" else
                                         f"{len(data.classes)} classes") + f" ({data.task}); split "
        + ", ".join(f"{k} {n}" for k, n in data.dataset["split_counts"].items())
        + f"; {data.leakage['duplicate_groups']} duplicate/flip groups found")
    log(f"split: {data.split['method']}")
    _write_split_csv(data, os.path.join(out, "split.csv"))
    log(f"validation metric (kept epoch, early stop): {opts.validation_metric}")

    if data.split.get("folds"):
        outcome = _cross_validate(request, data, out, work, timer)
    else:
        outcome = _single_split(data, opts, out, work, timer, _ddp_workers(request), request.coverage)
    fit, threshold, all_metrics = outcome.fit, outcome.threshold, outcome.metrics
    weights_record = _keep_no_weights_path(outcome, os.path.join(out, "model"))
    with open(os.path.join(out, "config.yaml"), "w") as handle:
        yaml.safe_dump(fit.config, handle, sort_keys=False)
    trained = fit.trained
    write_json(os.path.join(out, "metrics.json"), all_metrics)
    versions = library_versions()
    model_manifest.write_manifest(os.path.join(out, "model"), {
        "tool_version": TOOL_VERSION, "task": data.task, "classes": model_fit.class_order(data),
        "positive_label": data.positive_label, "threshold": threshold, "image_size": opts.image_size,
        "model_name": opts.model_name, "ludwig_version": versions.get("ludwig"),
        "target_scaling": fit.target_scaling, "trust": outcome.trust},
        outcome.options, fit.class_weights, fit.positive_weight, train_rows=fit.train_rows)
    with timer.stage("zipping the model"):
        shutil.make_archive(os.path.join(out, "trained_model"), "zip", root_dir=out, base_dir="model")

    summary = {
        "tool": {"name": "image-learner", "version": TOOL_VERSION},
        "command_line": sys.argv,
        "inputs": {"csv_file": os.path.basename(request.csv_file), "image_zip": os.path.basename(request.image_zip)},
        "columns": data.columns, "target_column": data.columns["label"],
        "task": data.task, "task_reason": data.task_reason, "classes": data.classes,
        "target_scaling": fit.target_scaling,
        "positive_label": data.positive_label, "threshold": threshold,
        "threshold_policy": _threshold_policy(opts, bool(outcome.cross_validation)) if threshold is not None else None,
        "dataset": data.dataset, "split": data.split, "leakage": data.leakage, "warnings": data.warnings,
        "model": {"name": opts.model_name, "pretrained": opts.use_pretrained,
                  "weights_source": _weights_source(opts), "fine_tune": opts.fine_tune,
                  "image_size": opts.image_size},
        "training": {**{k: v for k, v in asdict(opts).items() if k not in ("model_name", "image_size")},
                     "pretrained_weights": weights_record,
                     "class_weights_used": fit.class_weights or fit.positive_weight,
                     "epochs_run": len(trained.history), "best_epoch": trained.best_epoch,
                     "best_epoch_chosen_by": "the median kept epoch of the folds (final model: no validation)"
                     if outcome.cross_validation else _chosen_by(data.task, opts.validation_metric)},
        **({"cross_validation": outcome.cross_validation} if outcome.cross_validation else {}),
        "distributed": {"mode": request.distributed, "workers": request.num_workers},
        "device": trained.device, "versions": versions, "metrics": all_metrics,
        "timings_s": timer.seconds,
    }
    write_json(os.path.join(out, SUMMARY_FILE), summary)
    if request.make_report:
        import report_builder

        with timer.stage("writing the report"):
            report_builder.build_report(out, images_dir=images_dir, ludwig_model=trained.ludwig_model)
    return summary


def _keep_no_weights_path(outcome, model_dir: str) -> str | None:
    """--pretrained-weights is a path on the training machine: the delivered model's manifest options,
    its model_hyperparameters.json and config.yaml keep the file's name and SHA-256 instead
    (ludwig_config.pretrained_weights_record); returns that record (None without the option)."""
    path = outcome.options.pretrained_weights
    if not path:
        return None
    record = ludwig_config.pretrained_weights_record(path)
    outcome.options = replace(outcome.options, pretrained_weights=record)
    outcome.fit.config["input_features"][0]["encoder"]["pretrained_weights"] = record
    saved = os.path.join(model_dir, "model_hyperparameters.json")  # Ludwig's copy of the config
    with open(saved) as handle:
        config = json.load(handle)
    config["input_features"][0]["encoder"]["pretrained_weights"] = record
    with open(saved, "w") as handle:
        json.dump(config, handle, indent=4)
    return record


def _ddp_workers(request: RunRequest) -> int:
    return request.num_workers if request.distributed == "ddp" else 0


def _single_split(data, opts, out: str, work: str, timer, ddp_workers: int = 0,
                  coverage: float = trust.DEFAULT_COVERAGE):
    """One fit on the train split (validation picks the kept epoch, test evaluated each epoch)."""
    with timer.stage(f"training {opts.model_name} for up to {opts.epochs} epochs"):
        fit = model_fit.fit(data, data.table, opts, work, os.path.join(out, "model"), ddp_workers)
    log(f"device: {fit.trained.device}; best epoch {fit.trained.best_epoch} of {len(fit.trained.history)}")
    fit.trained.history.to_csv(os.path.join(out, "training_history.csv"), index=False)
    with timer.stage("predicting every image"):
        raw = model_fit.outputs(data, fit, data.table, opts)
    classes = model_fit.class_order(data)
    validation = data.table["split"].to_numpy() == 1
    # temperature, threshold and conformal quantile: all fitted on validation rows, never test
    temperature, proba = trust.calibrate(data.task, classes, data.table["label"], raw, validation)
    threshold = None
    if data.task == "binary":  # chosen on validation (never test), then used for every split, table and plot
        threshold = model_fit.binary_threshold(data, data.table["label"][validation], proba[validation, 1], opts)
    record = _trust_record(data, classes, proba, validation, coverage, temperature, "validation split")
    predictions = evaluation.predictions_table(data, proba,
                                               evaluation.predicted_labels(data.task, classes, proba, threshold),
                                               classes)
    predictions = trust.add_columns(predictions, data.task, classes, _point_outputs(data, proba), record)
    write_output_csv(predictions, os.path.join(out, "predictions.csv"))
    with timer.stage("computing metrics (with bootstrap intervals)"):
        all_metrics = evaluation.metrics_by_split(data.task, predictions, classes, opts.random_seed)
        all_metrics["trust"] = trust.summary(predictions, data.task, classes, record, opts.random_seed)
    return Outcome(fit, opts, threshold, all_metrics, trust=record)


def _point_outputs(data, outputs: np.ndarray) -> np.ndarray:
    """What the conformal step scores: the probabilities, or a regression's predicted values."""
    return outputs[:, 0] if data.task == "regression" else outputs


def _trust_record(data, classes, outputs, rows, coverage: float, temperature, calibrated_on: str) -> dict:
    labels = data.table["label"].to_numpy(float) if data.task == "regression" else data.table["label"]
    record, warning = trust.fit_record(data.task, classes, labels, _point_outputs(data, outputs), rows, coverage,
                                       temperature, calibrated_on)
    if temperature is not None:
        log(f"temperature scaling: T = {temperature:.3f}, fitted on the {record['calibration_rows']} rows of the "
            f"{calibrated_on}")
    if warning:
        log(f"WARNING: {warning}")
        data.warnings.append(warning)
    elif record["conformal_quantile"] is not None:
        log(f"conformal {record['conformal_score']} quantile at coverage {coverage:g}: "
            f"{record['conformal_quantile']:.4g} ({calibrated_on})")
    return record


@dataclass
class Outcome:
    fit: model_fit.Fit  # the delivered model (in out/model)
    options: ludwig_config.TrainingOptions  # what trained it (the final CV model: other epochs)
    threshold: float | None
    metrics: dict  # metrics.json
    cross_validation: dict | None = None  # run_summary's facts of a cross-validation
    trust: dict | None = None  # the manifest's trust record (trust.fit_record)


def _cross_validate(request: RunRequest, data, out: str, work: str, timer):
    """The folds, then the final model; predictions.csv holds the out-of-fold predictions (``fold``)."""
    opts = request.training
    cv = cross_validation.run(data, opts, request.data.split_probabilities, work, os.path.join(out, "model"), timer,
                              _ddp_workers(request))
    log(f"device: {cv.final.trained.device}; kept epochs per fold {cv.kept_epochs}; final model "
        f"{cv.final_options.epochs} epochs")
    # the delivered model's epochs first (fold "final"), as the report's learning curves read them, then each fold's
    final_history = cv.final.trained.history.assign(fold="final")
    pd.concat([final_history, cv.history.astype({"fold": str})], ignore_index=True)[cv.history.columns.union(
        final_history.columns, sort=False)].to_csv(os.path.join(out, "training_history.csv"), index=False)
    fold = data.table["fold"].to_numpy()
    classes = model_fit.class_order(data)
    # the temperature and conformal quantile of the delivered model: fitted on the pooled out-of-fold rows
    pooled = fold > 0
    temperature, proba = trust.calibrate(data.task, classes, data.table["label"], cv.proba, pooled)
    predicted, threshold = cv.predicted, cv.threshold
    if data.task == "binary":  # retuned on the scaled out-of-fold P(positive): the same cut, on what is shown
        threshold = model_fit.binary_threshold(data, data.table["label"][pooled], proba[pooled, 1], opts)
        predicted = np.where(pooled, cv.predicted, evaluation.predicted_labels(data.task, classes, proba, threshold))
        cv.fold_thresholds = [trust.scaled_threshold(t, temperature) for t in cv.fold_thresholds]
    record = _trust_record(data, classes, proba, pooled, request.coverage, temperature,
                           "pooled out-of-fold predictions")
    predictions = evaluation.predictions_table(data, proba, predicted, classes,
                                               np.where(fold > 0, cross_validation.SPLIT_NAME, "test"),
                                               pd.array(np.where(fold > 0, fold, None), dtype="Int64"))
    predictions = trust.add_columns(predictions, data.task, classes, _point_outputs(data, proba), record)
    write_output_csv(predictions, os.path.join(out, "predictions.csv"))
    # a regression's baseline: the median of every cross-validated row (the final model's training rows)
    baseline = float(np.median(data.table.loc[fold > 0, "label"].astype(float))) if data.task == "regression" else None

    def score(part, splits):
        return evaluation.metrics_by_split(data.task, part, classes, opts.random_seed, splits, baseline)

    with timer.stage("computing metrics (with bootstrap intervals)"):
        all_metrics = {**score(predictions, ("test",)),
                       "cross_validation": cross_validation.summarise(predictions, score, cv.kept_epochs,
                                                                      cv.fold_thresholds),
                       "trust": trust.summary(predictions, data.task, classes, record, opts.random_seed)}
    facts = {"k": len(cv.kept_epochs), "fold_sizes": cv.fold_sizes, "kept_epochs": cv.kept_epochs,
             "final_epochs": cv.final_options.epochs,
             "final_epochs_rule": "median kept epoch across folds, halves rounded up",
             "final_training_rows": cv.final.train_rows, "fold_thresholds": cv.fold_thresholds or None,
             "threshold_chosen_on": "pooled out-of-fold predictions" if data.task == "binary" else None}
    return Outcome(cv.final, cv.final_options, threshold, all_metrics, facts, trust=record)


def _threshold_policy(opts, cross_validated: bool = False) -> str:
    """How the binary threshold was set, in words (run summary, report)."""
    if opts.threshold is not None:
        return "fixed by --threshold"
    rows = "the pooled out-of-fold predictions" if cross_validated else "the validation split"
    return f"tuned on {rows} for the highest {metrics.THRESHOLD_POLICY_NAMES[opts.threshold_metric]}"


def _chosen_by(task: str, validation_metric: str) -> str:
    _, column, higher_is_better = ludwig_config.VALIDATION_METRICS[task][validation_metric]
    return f"{'highest' if higher_is_better else 'lowest'} validation {column.replace('_', ' ')}"


def _write_split_csv(data, path: str) -> None:
    table = data.table.drop(columns=["read_path", "stratum"])  # a scratch path, gone after the run; a split input
    table["split"] = np.asarray(split_utils.SPLIT_NAMES)[table["split"].to_numpy()]
    table.to_csv(path, index=False)


def _weights_source(opts) -> str:
    if not opts.use_pretrained:
        return "none (random initialisation)"
    if opts.pretrained_weights:
        return f"local file {os.path.basename(opts.pretrained_weights)}"
    return "timm / Hugging Face hub" + (" (offline cache)" if os.environ.get("HF_HUB_OFFLINE") else "")
