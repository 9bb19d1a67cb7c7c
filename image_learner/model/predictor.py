"""Predict with a saved model: load a trained_model.zip offline and classify new images.

A model file is active input, so the ZIP is checked before anything is loaded (model_archive.py): only
the files training writes may be in it (weights as safetensors, configs as JSON: nothing is unpickled),
each exactly as this Image Learner and Ludwig version write it. The network is rebuilt from the manifest
without Ludwig (inference_network.py: Ludwig's numbers to 1e-5, without its import and per-call costs)
and without downloading anything, with the hub offline: its weights come from the ZIP. The images are
decoded and resized in memory by training's rules (image_check) and fed to it in batches of --batch-size.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from image_learner import host_allocator
from image_learner.training import devices
from image_learner.evaluation import calibration
from image_learner.evaluation import evaluation
from image_learner.evaluation import ood
from image_learner.evaluation import trust
from image_learner.evaluation import tta
from image_learner.model import fold_ensemble
from image_learner.model import inference_network
from image_learner.model import model_archive
from image_learner.data import tabular, task_choice
from image_learner.data.image_check import unreadable_images_note
from image_learner.data.input_utils import (InputError, ZipLimits, extract_images, label_text, match_rows_to_images,
                         read_metadata_csv, resolve_column, write_output_csv)
from image_learner import console
from image_learner.run_files import (PREDICTION_LOG, SUMMARY_FILE, TOOL_VERSION, StageTimer, library_versions, log, log_skipped_members,
                       prepare_output_dir, remove_outputs, scratch_tempdir, write_json)


@dataclass
class PredictRequest:
    model_zip: str
    image_zip: str
    output_dir: str
    csv_file: str | None = None
    image_column: str = "image_path"
    target_column: str | None = None  # None: use "label" when the CSV has it
    batch_size: int = 32
    zip_limits: ZipLimits = ZipLimits()
    overwrite: bool = False
    evaluate: bool = True  # with true labels in the CSV: metrics.json and report.html too
    verbose: bool = False  # Ludwig's and the libraries' output on the console too, not only in prediction_log.txt
    abstain_above_set_size: int | None = None  # rows whose conformal set is larger: "abstain"
    workers: int = 1  # threads that decode and resize the images while the network runs
    tta: str | None = None  # test-time augmentation views (evaluation/tta.py); None: the model's own


def _images_to_predict(request: PredictRequest, images_dir: str, files: list[str], task: str = "multiclass",
                       tabular_records: list[dict] | None = None):
    """Table of image / image_file (/ true_label, or true_value for a regression; / tabular_<column> for a
    model trained with --tabular-columns) rows: the CSV's rows, or every image of the ZIP."""
    if tabular_records and not request.csv_file:
        raise InputError("this model uses the tabular columns " + ", ".join(r["column"] for r in tabular_records)
                         + " beside the image: pass --csv-file with them")
    if tabular_records:
        tabular.require_columns(read_metadata_csv(request.csv_file), tabular_records,
                                os.path.basename(request.csv_file))
    if not request.csv_file:
        table = match_rows_to_images(pd.DataFrame({"image": files}), "image", files).table
        if table.empty:
            raise InputError(f"image ZIP {os.path.basename(request.image_zip)!r} holds no images")
        return table[["image", "image_file"]], None, []
    raw = read_metadata_csv(request.csv_file)
    image_col = resolve_column(raw, request.image_column, "image", "--image-column")
    label_col = None
    if request.evaluate and request.target_column:
        label_col = resolve_column(raw, request.target_column, "label", "--target-column")
    elif request.evaluate and "label" in raw.columns:
        label_col = "label"
    match = match_rows_to_images(raw, image_col, files)
    if match.table.empty:
        raise InputError("no CSV row matched an image in the ZIP")
    notes = ([f"{len(match.unmatched_rows)} CSV rows have no image in the ZIP and were skipped"]
             if match.unmatched_rows else [])
    table = pd.DataFrame({"image": match.table[image_col], "image_file": match.table["image_file"]})
    table = _with_tabular_columns(table, match.table, tabular_records)
    if label_col:
        labels = label_text(match.table[label_col], label_col, match.table["csv_line"])
        if task == "regression":
            table["true_value"] = task_choice.numbers_only(labels, label_col, match.table["csv_line"],
                                                           "a regression model's evaluation")
        else:
            table["true_label"] = labels.to_numpy()
    return table, label_col, notes


def predict(request: PredictRequest) -> pd.DataFrame:
    """Write predictions.csv (and, with true labels, metrics.json) into the output directory."""
    started = time.time()
    out = os.path.abspath(request.output_dir)
    k = request.abstain_above_set_size
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InputError(f"--abstain-above-set-size must be a whole number of at least 1, got {k!r}")
    prepare_output_dir(out, request.overwrite)
    try:
        with console.library_output_to(os.path.join(out, PREDICTION_LOG), request.verbose), \
                scratch_tempdir(out) as work:
            predictions = _predict_in(request, out, work, started)
    except BaseException:
        remove_outputs(out)
        raise
    return predictions


def _predict_in(request: PredictRequest, out: str, work: str, started: float) -> pd.DataFrame:
    timer = StageTimer(after_stage=host_allocator.release)  # what a stage freed, back to the kernel
    with timer.stage("unpacking and validating the model"):
        # the model ZIP has its own limits (model_archive.MODEL_LIMITS); request.zip_limits are the images'
        model_dir, manifest = model_archive.unpack_model(request.model_zip, os.path.join(work, "model_zip"),
                                                         TOOL_VERSION)
    _check_abstain(request.abstain_above_set_size, manifest)
    images_dir = os.path.join(work, "images")
    with timer.stage("unpacking images"):
        unpacked = extract_images(request.image_zip, images_dir, request.zip_limits)
    log_skipped_members(unpacked)
    table, label_col, notes = _images_to_predict(request, images_dir, unpacked.files, manifest["task"],
                                                 manifest.get("tabular"))
    tta_mode = tta_of(request.tta, manifest)  # decided (and logged) once; the summary says the same
    model, predictions = _predict_table(model_dir, manifest, table, images_dir, notes, request, timer, tta_mode)
    for note in notes:
        log(f"WARNING: {note}")
    if "ood" in predictions:
        record = manifest["ood"]
        log(f"out-of-distribution: {int(predictions['ood'].sum())} of {len(predictions)} images flagged (top-class "
            f"probability below {record['threshold']:.6g}, which keeps {record['keep_rate']:.0%} of the "
            f"{record['rows']} {record['fitted_on']} images)")
    predictions = _abstain(predictions, request.abstain_above_set_size)
    write_output_csv(predictions, os.path.join(out, "predictions.csv"))
    found = None
    if label_col:
        with timer.stage("computing metrics (with bootstrap intervals)"):
            found = _evaluate(predictions, manifest)
        write_json(os.path.join(out, "metrics.json"), found)
    timings = with_rates({**timer.seconds, "total": round(time.time() - started, 2)}, len(table))
    summary = _summary(request, manifest, predictions, unpacked, notes, found, timings, tta_mode)
    write_json(os.path.join(out, SUMMARY_FILE), {**summary, "target_column": label_col})
    if label_col:
        import report_builder  # the training report's builder, test section only

        with timer.stage("writing the report"):
            report_builder.build_report(out, images_dir=images_dir, ludwig_model=model)  # Grad-CAM on the network
    return predictions


def _summary(request, manifest, predictions, unpacked, notes, found_metrics, timings, tta_mode: str) -> dict:
    """run_summary.json of a prediction run, shaped like training's so the same report reads it."""
    labelled = "true_label" in predictions
    counts = predictions["true_label"].value_counts().to_dict() if labelled else {}
    files = unpacked.files
    return {
        "mode": "predict", "tool": {"name": "image-learner", "version": TOOL_VERSION},
        "inputs": {"csv_file": os.path.basename(request.csv_file or "") or "none",
                   "image_zip": os.path.basename(request.image_zip)},
        "task": manifest["task"], "classes": manifest["classes"], "positive_label": manifest["positive_label"],
        "threshold": manifest["threshold"], "warnings": notes, "manifest": manifest,
        "dataset": {"csv_rows": len(predictions), "images_in_zip": len(files),
                    "non_image_files_skipped": len(unpacked.skipped), "matched_rows": len(predictions),
                    "unmatched_rows": 0, "unused_images": len(files) - len(predictions),
                    "split_counts": {"test": len(predictions)}, "class_counts": {"test": counts}},
        "target_scaling": manifest["target_scaling"],
        "split": {"method": "none: a saved model applied to new images (all evaluated as test)",
                  "seed": 42, "probabilities": [], "grouped_by": []},
        "model": {"name": manifest["model_name"], "image_size": manifest["image_size"],
                  "weights_source": f"trained model {os.path.basename(request.model_zip)}",
                  "tta": tta.describe(tta_mode),
                  "tabular_description": tabular.describe(manifest.get("tabular"))},
        "training": {}, "device": devices.describe(), "versions": library_versions(),
        "metrics": found_metrics, "timings_s": timings,
        "ood": ood.describe(manifest.get("ood"), predictions["ood"].to_numpy(bool) if "ood" in predictions else None),
    }


PER_IMAGE_STAGES = ("unpacking images", "checking ", "predicting ")  # stage names that grow with the images
PROGRESS_STEPS = 10  # prediction logs its progress at most this many times


def with_rates(timings: dict, n_images: int) -> dict:
    """``timings`` (stage -> seconds, with "total") plus the run as fixed seconds + images/s: the stages
    that grow with the images (unpacking them; decoding, resizing and predicting them) give images_per_s
    (n_images over their sum); fixed_s is the rest of the total (the model's checks and loading; with true
    labels also the metrics, which grow only with the bootstrap)."""
    per_image = sum(v for k, v in timings.items() if k.startswith(PER_IMAGE_STAGES))
    rate = round(n_images / per_image, 1) if per_image > 0 else None
    return {**timings, "fixed_s": round(timings["total"] - per_image, 2), "per_image_stages_s": round(per_image, 2),
            "images_per_s": rate}


def _predict_images(network, table: pd.DataFrame, images_dir: str, side: int, batch_size: int, workers: int,
                    notes: list[str], tta_mode: str = "none", tabular_inputs=None):
    """(rows kept, Ludwig's predictions for them): the training's image rules, in memory (odd images
    converted the same way; unreadable ones skipped and named, by training's rule,
    image_check.unreadable_images_note at its default limit), progress logged. With ``tta_mode`` the mean
    over its views (evaluation/tta.py), as training's evaluation averaged them."""
    views = tta.views(tta_mode)
    files = table["image_file"].tolist()
    bad, converted, kept, outputs = {}, {}, [], []
    every = max(1, math.ceil(len(files) / PROGRESS_STEPS / batch_size))
    started = time.time()
    batches = inference_network.decoded_batches([os.path.join(images_dir, f) for f in files], side, batch_size,
                                                workers)
    for number, (start, decoded) in enumerate(batches, 1):
        good, rows = [], []
        for k, (pixels, changes, reason) in enumerate(decoded, start):
            if reason is not None:
                bad[files[k]] = reason
                continue
            if changes:
                converted[files[k]] = "; ".join(changes)
            kept.append(k)
            rows.append(k)
            good.append(pixels)
        try:
            if good:
                batch = np.stack(good)
                extra = () if tabular_inputs is None else (tabular_inputs[rows],)  # --tabular-columns' inputs
                run = network if isinstance(network, _Members) else partial(inference_network.run, network)
                outputs.append(tta.averaged([run(tta.batch_view(batch, view), *extra) for view in views])
                               if len(views) > 1 else run(batch, *extra))
        except (MemoryError, RuntimeError) as err:
            if devices.is_out_of_memory(err):
                raise devices.OutOfMemory(devices.oom_message("predicting", devices.describe(), batch_size, side,
                                                              False)) from err
            raise
        done = min(start + batch_size, len(files))
        if number % every == 0 or done == len(files):
            log(f"predicted {done} of {len(files)} images ({done / len(files):.0%}) in {time.time() - started:.1f} s")
    unreadable = unreadable_images_note(bad, len(set(files)))
    if unreadable:
        notes.append(unreadable)
    if converted:
        notes.append(f"{len(converted)} image(s) converted as in training "
                     f"({'; '.join(sorted(set(converted.values()))[:5])})")
    return table.iloc[kept].reset_index(drop=True), (np.concatenate(outputs) if outputs else None)


def tta_of(requested: str | None, manifest: dict) -> str:
    """The test-time augmentation predict runs: the user's --tta, else the one training evaluated with
    (its temperature, threshold and prediction sets were fitted on those averaged probabilities)."""
    trained = manifest["training"]["options"]["tta"]
    mode = requested or trained
    if mode != trained:
        log(f"WARNING: --tta {mode} differs from the model's {trained!r}: its temperature, threshold, class "
            "decision and prediction sets were fitted on probabilities averaged over the model's own views")
    log(f"test-time augmentation: {tta.describe(mode)}")
    return mode


def _load_network(manifest: dict, model_dir: str, device: str, name: str, weights: str = model_archive.WEIGHTS):
    """inference_network.load of a checked model (``weights``: its file, or a fold's); anything a checked file
    still makes fail is that file's fault (an InputError of one line naming it), running out of memory stays
    what it is."""
    try:
        return inference_network.load(manifest, os.path.join(model_dir, weights), device)
    except MemoryError:
        raise
    except Exception as err:
        if devices.is_out_of_memory(err):
            raise
        raise InputError(f"model {name!r}: it passes Image Learner's checks but cannot be loaded "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err


def _predict_table(model_dir: str, manifest: dict, table: pd.DataFrame, images_dir: str, notes: list[str],
                   request: PredictRequest, timer: StageTimer, tta_mode: str = "none"):
    """(the network, predictions.csv's table) for the rows of ``table`` whose image can be read."""
    import torch

    side, task, classes = manifest["image_size"], manifest["task"], manifest["classes"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as Ludwig's predictor (devices.select hides GPUs)
    with model_archive.offline_hub():  # the manifest is checked; nothing may come from the hub either
        with timer.stage("loading the model"):
            members = _Members.load(manifest, model_dir, device, os.path.basename(request.model_zip))
        network = members.networks[0]  # Grad-CAM's (the refit's, or fold 1's in a folds-only ensemble)
        with timer.stage(f"predicting {len(table)} images"):
            out, raw = _predict_images(members if manifest.get("ensemble") else network, table, images_dir, side,
                                       request.batch_size, request.workers, notes, tta_mode,
                                       _tabular_matrix(table, manifest))
    out = out.drop(columns=[c for c in out if c.startswith(tabular.PREFIX)])  # the inputs, not outputs
    record = manifest["trust"]
    delivered = raw if manifest.get("ensemble") or raw is None else inference_network.delivered(raw, manifest)
    if task == "regression":
        values = delivered.astype(float) if delivered is not None else np.zeros(0)
        out["predicted_value"] = values
        return network, trust.add_columns(out, "regression", classes, values, record)
    proba = delivered if delivered is not None else np.zeros((0, len(classes)))
    # the training's temperature first: the threshold and the sets were set on scaled probabilities
    proba = calibration.apply_temperature(proba, record["temperature"])
    out["predicted_label"] = evaluation.predicted_labels(task, classes, proba, manifest["threshold"],
                                                         manifest["class_offsets"])
    if task == "binary":
        out["threshold"] = manifest["threshold"]
    for k, cls in enumerate(classes):
        out[f"prob_{cls}"] = proba[:, k]
    if manifest.get("ood"):  # the threshold training set on validation rows' calibrated probabilities (ood.py)
        out["ood_score"] = ood.scores(proba)
        out["ood"] = ood.flags(proba, manifest["ood"])
    return network, trust.add_columns(out, task, classes, proba, record)


@dataclass
class _Members:
    """The networks whose outputs predict averages (fold_ensemble): the refit alone, or the fold models (and
    the refit), each with its own manifest (class order, target scaling). All are held at once: memory is the
    number of members times one network's weights (a batch's activations once per member, in turn)."""

    networks: list
    manifests: list

    @classmethod
    def load(cls, manifest: dict, model_dir: str, device: str, name: str) -> "_Members":
        record = manifest.get("ensemble")
        chosen = [(model_archive.WEIGHTS, manifest)] if fold_ensemble.uses_refit(manifest) else []
        chosen += [(fold_ensemble.member_name(k), fold_ensemble.fold_manifest(manifest, k))
                   for k in range(1, (record or {"k": 0})["k"] + 1)]
        return cls([_load_network(m, model_dir, device, name, weights) for weights, m in chosen],
                   [m for _, m in chosen])

    def __call__(self, batch: np.ndarray, *extra) -> np.ndarray:
        return fold_ensemble.averaged([inference_network.delivered(inference_network.run(n, batch, *extra), m)
                                       for n, m in zip(self.networks, self.manifests)])


def _with_tabular_columns(table: pd.DataFrame, matched: pd.DataFrame, records: list[dict] | None) -> pd.DataFrame:
    """The raw text of the model's tabular columns (--tabular-columns at training) beside each row, as
    tabular_<column>; the CSV's columns were checked by tabular.require_columns."""
    for record in records or []:
        table[tabular.PREFIX + record["column"]] = matched[record["column"]].astype(str).str.strip().to_numpy()
    return table


def _tabular_matrix(table: pd.DataFrame, manifest: dict):
    """The model's tabular inputs for every row of ``table`` (N x width, float32, in the config's feature
    order), encoded with the training rows' statistics and vocabularies the manifest records (never anything
    computed from the rows predicted); None for an image-only model."""
    records = manifest.get("tabular")
    return tabular.matrix(table.reset_index(drop=True), records) if records else None


def _check_abstain(k: int | None, manifest: dict) -> None:
    """--abstain-above-set-size needs the model's prediction sets (a classifier trained with --coverage)."""
    if k is None:
        return
    if manifest["task"] == "regression":
        raise InputError("--abstain-above-set-size applies to classification models; this model predicts a number")
    if manifest["trust"]["conformal_quantile"] is None:
        raise InputError("--abstain-above-set-size needs prediction sets, and this model has none "
                         "(trained with --coverage 0, or too few calibration rows)")


def _abstain(predictions: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """``abstain``: true where the prediction set holds more than ``k`` classes (the label is kept beside it)."""
    if k is None:
        return predictions
    return predictions.assign(abstain=predictions["set_size"].to_numpy() > k)


def _evaluate(predictions: pd.DataFrame, manifest: dict) -> dict:
    classes = manifest["classes"]
    if manifest["task"] != "regression":
        unknown = sorted(set(predictions["true_label"]) - set(classes))
        if unknown:
            raise InputError(f"labels {', '.join(unknown)} in the CSV are not classes this model knows "
                             f"({', '.join(classes)})")
    # every image predicted is scored as a test set; a regression has no train split here, so no baseline
    scored = predictions.assign(split="test")
    found = evaluation.metrics_by_split(manifest["task"], scored, classes, 42, ("test",))
    return {**found, "trust": trust.summary(scored, manifest["task"], classes, manifest["trust"], 42)}
