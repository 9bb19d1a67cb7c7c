"""The training run, stage by stage: inputs -> split -> Ludwig config -> training -> outputs -> report.

Everything is written below the output directory; the scratch folder (``.work-<random>``) is removed at
the end, and after a failure every file this run created is removed too, so no half-finished outputs
are ever mistaken for results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import yaml

from image_learner import fit_and_score
from image_learner.data import dataset_prep, image_health, tabular
from image_learner.evaluation import audit
from image_learner.training import ludwig_config
from image_learner.evaluation import ood
from image_learner.evaluation import subgroups
from image_learner.evaluation import tta
from image_learner.model import fold_ensemble, model_card, model_manifest, model_zip
from image_learner.training import model_fit
from image_learner import host_allocator
from image_learner.training import presets, provenance, search_run
import split_utils
from image_learner.data.input_utils import InputError, extract_images, read_metadata_csv, resolve_column
from image_learner import console
from image_learner.run_request import (RunRequest, check_task_options_early, resolve_task_options,
                                       resolve_training_options)
from image_learner.run_files import (TRAINING_LOG, SUMMARY_FILE, TOOL_VERSION, StageTimer, library_versions, log, log_skipped_members,
                       prepare_output_dir, remove_outputs, scratch_tempdir, write_json)


def run(request: RunRequest) -> dict:
    """Run the whole pipeline; returns the run summary (also written as run_summary.json)."""
    total_started = time.time()
    out = os.path.abspath(request.output_dir)
    split_utils.validate_probabilities(request.data.split_probabilities)
    ood.check_keep_rate(request.ood_keep_rate)
    if request.data.cross_validation and request.data.cross_validation < 2:
        raise InputError(f"--cross-validation needs at least 2 folds (0: off), got {request.data.cross_validation}")
    fold_ensemble.check_mode(request.ensemble, request.data.cross_validation, bool(request.data.tabular_columns))
    prepare_output_dir(out, request.overwrite)
    try:
        with console.library_output_to(os.path.join(out, TRAINING_LOG), request.verbose), \
                scratch_tempdir(out) as work:
            resolve_training_options(request)  # first torch import: its temp files land in work too
            summary = _run_stages(request, out, work)
        summary["timings_s"]["total"] = round(time.time() - total_started, 2)
        write_json(os.path.join(out, SUMMARY_FILE), summary)
    except BaseException:  # also a stop signal turned into an exception by the CLI
        remove_outputs(out)
        raise
    with open(os.path.join(out, TRAINING_LOG), "a", encoding="utf-8") as handle:  # the log ends the same way
        for line in final_summary(summary, out, request.make_report):
            log(line)
            handle.write(f"{console.PREFIX}{line}\n")
    return summary


# The headline metric per task: metrics.json key, its name in words
HEADLINE = {"multiclass": ("balanced_accuracy", "balanced accuracy"), "binary": ("roc_auc_macro", "ROC-AUC"),
            "regression": ("mae", "MAE")}


def headline(summary: dict) -> str | None:
    """``test balanced accuracy 0.612 (95% interval 0.510-0.710; 120 images)``: the task's headline metric on
    test, or on the pooled out-of-fold predictions of a cross-validation without a test split."""
    key, name = HEADLINE[summary["task"]]
    found = summary.get("metrics") or {}
    for where, scores in (("test", found.get("test")),
                          ("cross-validated (pooled out-of-fold)", (found.get("cross_validation") or {}).get("pooled"))):
        if scores and scores.get(key) is not None:
            interval = (scores.get("ci95") or {}).get(key)
            return (f"{where} {name} {scores[key]:.3f}"
                    + (f" (95% interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else " (")
                    + f"{'; ' if interval else ''}{scores.get('n', '?')} images)")
    return None


def final_summary(summary: dict, out: str, report: bool) -> list[str]:
    """The last lines of a run: the headline number, where the report, the model and the log are."""
    training = summary["training"]
    kept = (f"trained {training['epochs_run']} epoch(s), kept epoch {training['best_epoch']} "
            f"({training['best_epoch_chosen_by']})")
    lines = [f"done in {console.duration(summary['timings_s']['total'])}; {kept}"]
    lines += [line for line in [headline(summary)] if line]
    if report:
        lines.append(f"report: {os.path.join(out, 'report.html')}")
    lines += [f"model: {os.path.join(out, 'trained_model.zip')}",
              f"Ludwig's output and the libraries' warnings: {os.path.join(out, TRAINING_LOG)}"]
    return lines


def _run_stages(request: RunRequest, out: str, work: str) -> dict:
    timer = StageTimer(after_stage=host_allocator.release)  # what a stage freed, back to the kernel
    opts = request.training
    images_dir = os.path.join(work, "images")
    check_task_options_early(request)
    if request.data.subgroup_columns:  # decided before the images are unpacked
        request.data = replace(request.data, subgroup_columns=_subgroup_columns(request))
    if request.data.tabular_columns:  # names -> (column, kind), checked before the images are unpacked
        request.data = replace(request.data, tabular_columns=_tabular_columns(request))
    with timer.stage("unpacking images"):
        unpacked = extract_images(request.image_zip, images_dir, request.zip_limits)
    log_skipped_members(unpacked)
    with timer.stage("matching CSV rows and splitting"):
        data = dataset_prep.prepare(request.csv_file, images_dir, unpacked.files, request.data,
                                    converted_dir=os.path.join(work, "converted"), resize_to=opts.image_size,
                                    skipped_files=unpacked.skipped)
    log(f"task: {data.task}; {data.task_reason}")
    note = presets.fit_to_task(opts, request.preset[1], data.task)  # again: the matched rows decide the task
    if note:
        log(f"note: {note}")
    resolve_task_options(opts, data.task)
    for warning in data.warnings:
        log(f"WARNING: {warning}")
    log(f"{len(data.table)} images, " + ("a numeric target" if data.task == "regression" else
                                         f"{len(data.classes)} classes") + f" ({data.task}); split "
        + ", ".join(f"{k} {n}" for k, n in data.dataset["split_counts"].items())
        + f"; {data.leakage['duplicate_groups']} duplicate/flip groups found")
    log(f"split: {data.split['method']}")
    if data.tabular:
        log("tabular inputs beside the image: " + ", ".join(f"{c} ({k})" for c, k in data.tabular.items())
            + "; scaled / one-hot from each fit's training rows only")
    if not data.split.get("folds"):  # before training: an untuned 0.5 is refused, not reported as a choice
        provenance.require_threshold_rows(data.task, data.table["split"], opts.threshold,
                                          request.data.split_probabilities, data.columns["split"])
        if opts.class_decision == "balanced" and not (data.table["split"] == 1).any():
            raise InputError("--class-decision balanced is tuned on the validation split, and this split has no "
                             "validation rows: give the split some (--split-probabilities, the split column) or "
                             "use --class-decision argmax")
    _write_split_csv(data, os.path.join(out, "split.csv"))
    if data.health is not None:
        image_health.write_csv(data.health, data.table, os.path.join(out, image_health.CSV_NAME))
        log(image_health.log_line(data.health_summary))
    log(f"validation metric (kept epoch, early stop): {opts.validation_metric}; "
        + presets.describe(request.preset[0], request.preset[1], {**asdict(request.data), **asdict(opts)}))

    found = search_run.run(request, data, images_dir, work, timer, _ddp_workers(request), out) if request.search \
        else None  # sets the winner's settings on opts: the test rows are touched by it alone, below
    if found:  # what the search chose came from it, not from the preset
        request.preset = (request.preset[0], tuple(o for o in request.preset[1] if o not in found["chosen"]))
    if data.split.get("folds"):
        outcome = fit_and_score.cross_validate(data, opts, request.data.split_probabilities, out, work, timer,
                                               _ddp_workers(request), request.ood_keep_rate, request.coverage,
                                               request.ensemble)
    else:
        outcome = fit_and_score.single_split(data, opts, out, work, timer, _ddp_workers(request),
                                             request.ood_keep_rate, request.coverage)
    fit, threshold, all_metrics = outcome.fit, outcome.threshold, outcome.metrics
    weights_record = _keep_no_weights_path(outcome, os.path.join(out, "model"))
    with open(os.path.join(out, "config.yaml"), "w") as handle:
        yaml.safe_dump(fit.config, handle, sort_keys=False)
    trained = fit.trained
    write_json(os.path.join(out, "metrics.json"), all_metrics)
    audit_facts = audit.run(data, fit.trained.ludwig_model, opts, out, timer) if request.audit \
        else {"skipped": "--no-audit"}
    versions = library_versions()
    model_manifest.write_manifest(os.path.join(out, "model"), {
        "tool_version": TOOL_VERSION, "task": data.task, "classes": model_fit.class_order(data),
        "positive_label": data.positive_label, "threshold": threshold,
        "class_offsets": outcome.class_decision["offsets"] if outcome.class_decision else None,
        "image_size": opts.image_size,
        "model_name": opts.model_name, "ludwig_version": versions.get("ludwig"),
        "target_scaling": fit.target_scaling, "ood": outcome.ood, "trust": outcome.trust,
        **({"tabular": fit.tabular} if fit.tabular else {}),
        **({"ensemble": outcome.cross_validation["ensemble"]} if (outcome.cross_validation or {}).get("ensemble")
           else {})},
        outcome.options, fit.class_weights, fit.positive_weight, train_rows=fit.train_rows)

    summary = {
        "tool": {"name": "image-learner", "version": TOOL_VERSION},
        "command_line": sys.argv,
        "inputs": {"csv_file": os.path.basename(request.csv_file), "image_zip": os.path.basename(request.image_zip),
                   "data_licence": request.data_licence},
        "columns": data.columns, "target_column": data.columns["label"],
        "task": data.task, "task_reason": data.task_reason, "classes": data.classes,
        "target_scaling": fit.target_scaling,
        "positive_label": data.positive_label, "threshold": threshold,
        "threshold_policy": outcome.threshold_provenance,
        "threshold_tuned": outcome.threshold_provenance.startswith("tuned") if threshold is not None else None,
        "class_decision": outcome.class_decision,
        "dataset": data.dataset, "split": data.split, "leakage": data.leakage,
        "warnings": data.warnings + outcome.warnings,
        **({"data_health": data.health_summary} if data.health_summary else {}),
        "model": {"name": opts.model_name, "pretrained": opts.use_pretrained,
                  "weights_source": _weights_source(opts), "fine_tune": opts.fine_tune,
                  "image_size": opts.image_size, "tta": tta.describe(opts.tta),
                  **({"tabular": fit.tabular, "tabular_description": tabular.describe(fit.tabular)}
                     if fit.tabular else {})},
        "training": {**{k: v for k, v in asdict(opts).items() if k not in ("model_name", "image_size", "tta")},
                     "pretrained_weights": weights_record, "preset": request.preset[0],
                     "options_from_preset": list(request.preset[1]),
                     "class_weights_used": fit.class_weights or fit.positive_weight,
                     "epochs_run": len(trained.history), "best_epoch": trained.best_epoch,
                     "best_epoch_chosen_by": outcome.epoch_provenance,
                     "selection": _selection(data, opts.validation_metric, bool(outcome.cross_validation))},
        **({"cross_validation": outcome.cross_validation} if outcome.cross_validation else {}),
        **({"search": found} if found else {}),
        "audit": audit_facts,
        "distributed": {"mode": request.distributed, "workers": request.num_workers},
        "ood": ood.describe(outcome.ood, outcome.ood_test_flags),
        "device": trained.device, "versions": versions, "metrics": all_metrics,
        "timings_s": timer.seconds,
    }
    _package_model(request, summary, os.path.join(out, "model"), timer)
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
def _package_model(request: RunRequest, summary: dict, model_dir: str, timer) -> None:
    """MODEL_CARD.md (and, with --export-onnx, model.onnx) beside the model's files, then trained_model.zip."""
    onnx = None
    if request.search:
        search_run.check(request)
    if request.export_onnx:
        from image_learner.model import onnx_export

        with timer.stage("exporting the model to ONNX"):
            onnx = onnx_export.export(model_dir, os.path.join(model_dir, onnx_export.ONNX_FILE))
        if request.ensemble != "refit":  # one network per file: the refit's weights (model_weights.safetensors)
            log(f"WARNING: model.onnx is the refit alone, not the --ensemble {request.ensemble} that predict uses")
            onnx = {**onnx, "description": f"{onnx['description']}; the refit alone, not the fold ensemble"}
    with open(os.path.join(model_dir, model_card.CARD), "w", encoding="utf-8") as handle:
        handle.write(model_card.build_card(summary, request.data_licence, onnx))
    with timer.stage("zipping the model"):
        model_zip.write_model_zip(model_dir, os.path.join(os.path.dirname(model_dir), "trained_model.zip"))


def _ddp_workers(request: RunRequest) -> int:
    return request.num_workers if request.distributed == "ddp" else 0


def _subgroup_columns(request: RunRequest) -> tuple[str, ...]:
    """--subgroup-columns as the CSV's column names, checked against the CSV's header (subgroups.py)."""
    raw = read_metadata_csv(request.csv_file)
    label = resolve_column(raw, request.data.target_column, "label", "--target-column")
    image = resolve_column(raw, request.data.image_column, "image", "--image-column")
    return subgroups.resolve_columns(raw, request.data.subgroup_columns, label, image)


def _tabular_columns(request: RunRequest) -> tuple[tuple[str, str], ...]:
    """--tabular-columns as (CSV column, kind) pairs, checked against the CSV (data/tabular.py): never the
    image, label, split or sample id column."""
    raw = read_metadata_csv(request.csv_file)
    options = request.data
    reserved = {"image": resolve_column(raw, options.image_column, "image", "--image-column"),
                "label": resolve_column(raw, options.target_column, "label", "--target-column"),
                "sample id": (resolve_column(raw, options.sample_id_column, "sample id", "--sample-id-column")
                              if options.sample_id_column else None),
                "split": (resolve_column(raw, options.split_column, "split", "--split-column")
                          if options.split_column else
                          next((c for c in raw.columns if c.strip().lower() == "split"), None))}
    names = [name if isinstance(name, str) else name[0] for name in options.tabular_columns]
    return tabular.resolve_columns(raw, names, reserved)


def _selection(data, validation_metric: str, cross_validated: bool) -> dict:
    """What picked the kept epoch, for the report: the training_history.csv column, its direction, and the
    validation rows and groups it was computed on (none for the final model of a cross-validation)."""
    _, column, higher_is_better = ludwig_config.VALIDATION_METRICS[data.task][validation_metric]
    validation = data.table["split"].to_numpy() == 1
    return {"metric": validation_metric, "column": f"validation_{column}", "higher_is_better": higher_is_better,
            "validation_images": None if cross_validated else int(validation.sum()),
            "validation_groups": None if cross_validated else int(data.table.loc[validation, "group"].nunique())}


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
