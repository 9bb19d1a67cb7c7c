"""Predict with a saved model: load a trained_model.zip offline and classify new images.

A model file is active input, so the ZIP is checked before anything is loaded (model_archive.py): only
the files training writes may be in it (weights as safetensors, configs as JSON: nothing is unpickled),
each exactly as this Image Learner and Ludwig version write it. The backbone is rebuilt without
downloading anything, with the hub offline: its weights come from the ZIP.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pandas as pd

from image_learner.training import devices
from image_learner.evaluation import calibration
from image_learner.evaluation import evaluation
from image_learner.evaluation import ood
from image_learner.evaluation import trust
from image_learner.evaluation import tta
from image_learner.model import model_archive
from image_learner.data import task_choice
from image_learner.data.image_check import check_images, unreadable_images_note
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
    workers: int = 1  # processes that check the images (training's pool, image_check.check_images)
    tta: str | None = None  # test-time augmentation views (evaluation/tta.py); None: the model's own


def _images_to_predict(request: PredictRequest, images_dir: str, files: list[str], task: str = "multiclass"):
    """Table of image / image_file (/ true_label, or true_value for a regression) rows: the CSV's rows, or
    every image of the ZIP."""
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
    from image_learner.training import ludwig_trainer

    timer = StageTimer()
    with timer.stage("unpacking and validating the model"):
        # the model ZIP has its own limits (model_archive.MODEL_LIMITS); request.zip_limits are the images'
        model_dir, manifest = model_archive.unpack_model(request.model_zip, os.path.join(work, "model_zip"),
                                                         TOOL_VERSION, ludwig_trainer.rendered_config)
    _check_abstain(request.abstain_above_set_size, manifest)
    images_dir = os.path.join(work, "images")
    with timer.stage("unpacking images"):
        unpacked = extract_images(request.image_zip, images_dir, request.zip_limits)
    log_skipped_members(unpacked)
    table, label_col, notes = _images_to_predict(request, images_dir, unpacked.files, manifest["task"])
    with timer.stage(f"checking {len(table)} images"):
        table = _checked_images(table, images_dir, os.path.join(work, "converted"), notes, manifest["image_size"],
                                request.workers)
    for note in notes:
        log(f"WARNING: {note}")
    tta_mode = tta_of(request.tta, manifest)
    model, predictions = _predict_table(model_dir, manifest, table, request.batch_size,
                                        f"model {os.path.basename(request.model_zip)!r}", timer, tta_mode, work)
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
    summary = _summary(request, manifest, predictions, unpacked, notes, found, timings)
    write_json(os.path.join(out, SUMMARY_FILE), {**summary, "target_column": label_col})
    if label_col:
        import report_builder  # the training report's builder, test section only

        with timer.stage("writing the report"):
            report_builder.build_report(out, images_dir=images_dir, ludwig_model=model)
    return predictions


def _summary(request, manifest, predictions, unpacked, notes, found_metrics, timings) -> dict:
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
                  "tta": tta.describe(request.tta or manifest["training"]["options"]["tta"])},
        "training": {}, "device": devices.describe(), "versions": library_versions(),
        "metrics": found_metrics, "timings_s": timings,
        "ood": ood.describe(manifest.get("ood"), predictions["ood"].to_numpy(bool) if "ood" in predictions else None),
    }


PER_IMAGE_STAGES = ("unpacking images", "checking ", "predicting ")  # stage names that grow with the images
# Predict's check has no hashes (~1 ms an image at 32 px, ~6.5 ms at 224 px, one process), while each spawned
# worker costs seconds to start on a loaded machine: 520 images at 224 px took 3.4 s in one process, 6.7 s in
# two (BENCHMARKS.md, "Predict speed"). The pool pays from about this many images.
PREDICT_MIN_IMAGES_PER_POOL = 2000


def with_rates(timings: dict, n_images: int) -> dict:
    """``timings`` (stage -> seconds, with "total") plus the run as fixed seconds + images/s: the stages
    that grow with the images (unpacking them, checking them, Ludwig's prediction) give images_per_s
    (n_images over their sum); fixed_s is the rest of the total (the model's checks and loading; with true
    labels also the metrics, which grow only with the bootstrap)."""
    per_image = sum(v for k, v in timings.items() if k.startswith(PER_IMAGE_STAGES))
    rate = round(n_images / per_image, 1) if per_image > 0 else None
    return {**timings, "fixed_s": round(timings["total"] - per_image, 2), "per_image_stages_s": round(per_image, 2),
            "images_per_s": rate}


def _checked_images(table: pd.DataFrame, images_dir: str, converted_dir: str, notes: list[str],
                    image_size: int, workers: int = 1) -> pd.DataFrame:
    """The training's image rules: odd images converted and resized the same way, unreadable ones
    skipped and named, by training's rule (image_check.unreadable_images_note, at its default limit).
    Without the leakage-guard hashes (predict has no guard); in training's worker pool from
    PREDICT_MIN_IMAGES_PER_POOL images."""
    files = table["image_file"].tolist()
    workers = workers if len(files) >= PREDICT_MIN_IMAGES_PER_POOL else 1
    checked = check_images(images_dir, files, converted_dir, workers, resize_to=image_size, health=False,
                           fingerprints=False, png_level=0)  # read once: the fastest copy to write and to decode
    unreadable = unreadable_images_note(checked.bad, len(set(files)))
    if unreadable:
        notes.append(unreadable)
    if checked.converted:
        notes.append(f"{len(checked.converted)} image(s) converted as in training "
                     f"({'; '.join(sorted(set(checked.converted.values()))[:5])})")
    kept = table.assign(read_path=checked.paths)
    return kept[kept["read_path"].notna()].reset_index(drop=True)


def tta_of(requested: str | None, manifest: dict) -> str:
    """The test-time augmentation predict runs: the user's --tta, else the one training evaluated with
    (its temperature, threshold and prediction sets were fitted on those averaged probabilities)."""
    trained = manifest["training"]["options"]["tta"]
    mode = requested or trained
    if mode != trained:
        log(f"WARNING: --tta {mode} differs from the model's {trained!r}: its temperature, threshold and "
            "prediction sets were fitted on probabilities averaged over the model's own views")
    log(f"test-time augmentation: {tta.describe(mode)}")
    return mode


def _predict_table(model_dir: str, manifest: dict, table: pd.DataFrame, batch_size: int, source: str,
                   timer: StageTimer | None = None, tta_mode: str = "none", scratch_dir: str | None = None):
    """``source``: how errors name the model file; ``timer`` times loading and predicting apart;
    ``tta_mode``: the views averaged (their files are written below ``scratch_dir``)."""
    import tempfile
    from contextlib import nullcontext

    from image_learner.training import ludwig_trainer

    stage = timer.stage if timer else (lambda name: nullcontext())
    classes, paths = manifest["classes"], table["read_path"].tolist()
    with model_archive.offline_hub():  # the config is validated; nothing may come from the hub either
        with stage("loading the model"):
            model = ludwig_trainer.load_model(model_dir, source)
        with stage(f"predicting {len(table)} images"), tempfile.TemporaryDirectory(dir=scratch_dir) as views_dir:
            per_view = []
            for i, view in enumerate(tta.views(tta_mode)):
                view_paths = tta.view_copies(paths, view, os.path.join(views_dir, str(i)))
                ludwig_table = pd.DataFrame({"image_path": view_paths})
                if manifest["task"] == "regression":
                    scaling = manifest["target_scaling"]
                    per_view.append(ludwig_trainer.predict_values(model, ludwig_table, batch_size, scaling["mean"],
                                                                  scaling["std"]))
                else:
                    per_view.append(ludwig_trainer.predict_probabilities(model, ludwig_table, classes,
                                                                         manifest["task"], batch_size))
            # a regression's values or the class probabilities, before the temperature (as training averaged)
            values = proba = tta.averaged(per_view) if len(per_view) > 1 else per_view[0]
    out = table.drop(columns=["read_path"])
    record = manifest["trust"]
    if manifest["task"] == "regression":
        out["predicted_value"] = values
        return model, trust.add_columns(out, "regression", classes, values, record)
    # the training's temperature first: the threshold and the sets were set on scaled probabilities
    proba = calibration.apply_temperature(proba, record["temperature"])
    out["predicted_label"] = evaluation.predicted_labels(manifest["task"], classes, proba, manifest["threshold"])
    if manifest["task"] == "binary":
        out["threshold"] = manifest["threshold"]
    for k, cls in enumerate(classes):
        out[f"prob_{cls}"] = proba[:, k]
    if manifest.get("ood"):  # the threshold training set on validation rows' calibrated probabilities (ood.py)
        out["ood_score"] = ood.scores(proba)
        out["ood"] = ood.flags(proba, manifest["ood"])
    return model, trust.add_columns(out, manifest["task"], classes, proba, record)


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
