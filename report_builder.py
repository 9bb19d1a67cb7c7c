#!/usr/bin/env python3
"""Build report.html from a finished run: one self-contained file (plotly.js embedded once, images as
data URIs) that opens offline. Every number is recomputed with scikit-learn from predictions.csv and
is also shown as an HTML table, so the report stays useful where a Galaxy server strips scripts.

    python report_builder.py OUTPUT_DIR     # rebuild the report of a finished run
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from image_learner.data.input_utils import read_output_csv
from image_learner.evaluation import bootstrap
from image_learner.evaluation import metrics
from image_learner.evaluation import regression_metrics
from image_learner.report import report_audit
from image_learner.report import report_health
from image_learner.report import report_images
from image_learner.report import report_plots
from image_learner.report import report_plots_regression
from image_learner.report import report_selection
from image_learner.report import report_subgroups
from image_learner.report import report_trust

SPLITS = ("train", "validation", "test")
HAM10000_CLASSES = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
METRIC_LABELS = {
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy (mean recall)",
    "macro_precision": "Precision (macro)", "macro_recall": "Recall (macro)", "macro_f1": "F1 (macro)",
    "weighted_precision": "Precision (weighted)", "weighted_recall": "Recall (weighted)",
    "weighted_f1": "F1 (weighted)", "roc_auc_macro": "ROC-AUC (one-vs-rest, macro)",
    "roc_auc_weighted": "ROC-AUC (one-vs-rest, weighted)", "average_precision_macro": "Average precision (macro)",
    "cohen_kappa": "Cohen's kappa", "matthews_corrcoef": "Matthews correlation", "log_loss": "Log loss",
    "top_2_accuracy": "Top-2 accuracy", "top_3_accuracy": "Top-3 accuracy",
    "expected_calibration_error": "Expected calibration error",
}
CITATIONS = {
    "ludwig": "Molino P., Dudin Y., Miryala S. S. Ludwig: a type-based declarative deep learning toolbox. "
              "arXiv:1909.07930 (2019). doi:10.48550/arXiv.1909.07930",
    "timm": "Wightman R. PyTorch Image Models (timm). GitHub (2019). doi:10.5281/zenodo.4414861",
    "metaformer": "Yu W. et al. MetaFormer baselines for vision. IEEE TPAMI 46(2), 896-912 (2024). "
                  "doi:10.1109/TPAMI.2023.3329173",
    "efficientnet": "Tan M., Le Q. V. EfficientNet: rethinking model scaling for convolutional neural networks. "
                    "ICML (2019). arXiv:1905.11946",
    "resnet": "He K., Zhang X., Ren S., Sun J. Deep residual learning for image recognition. CVPR (2016). "
              "doi:10.1109/CVPR.2016.90",
    "convnext": "Liu Z. et al. A ConvNet for the 2020s. CVPR (2022). doi:10.1109/CVPR52688.2022.01167",
    "vit": "Dosovitskiy A. et al. An image is worth 16x16 words: transformers for image recognition at scale. "
           "ICLR (2021). arXiv:2010.11929",
    "ham10000": "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
                "dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018). "
                "doi:10.1038/sdata.2018.161",
}
BACKBONE_PAPERS = (("caformer", "metaformer"), ("convformer", "metaformer"), ("poolformer", "metaformer"),
                   ("efficientnet", "efficientnet"), ("resnet", "resnet"), ("convnext", "convnext"),
                   ("vit_", "vit"), ("deit", "vit"))


def _read_run(output_dir: str):
    with open(os.path.join(output_dir, "run_summary.json")) as handle:
        summary = json.load(handle)
    # Labels as written: "01" stays "01", a class "N/A" or "None" stays that text (never NaN).
    predictions = read_output_csv(os.path.join(output_dir, "predictions.csv"))
    if "split" not in predictions:  # predictions on new images: all evaluated as test
        predictions["split"] = "test"
    history_path = os.path.join(output_dir, "training_history.csv")
    history = pd.read_csv(history_path) if os.path.exists(history_path) else pd.DataFrame()
    if "fold" in history:  # cross-validation: the curves of the delivered model; the folds' are in the file
        history = history[history["fold"].astype(str) == "final"]
    config_path = os.path.join(output_dir, "config.yaml")
    config = yaml.safe_load(open(config_path)) if os.path.exists(config_path) else {}
    return summary, predictions, history, config


def _class_order(predictions: pd.DataFrame) -> list[str]:
    return [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]


def _split_arrays(predictions: pd.DataFrame, classes: list[str], split: str):
    part = predictions[predictions["split"] == split]
    return (part["true_label"].to_numpy(), part[[f"prob_{c}" for c in classes]].to_numpy(),
            part["predicted_label"].to_numpy())


REGRESSION_LABELS = {
    "mae": "Mean absolute error (MAE)", "rmse": "Root mean squared error (RMSE)",
    "r2": "R² (share of the variance explained)", "pearson_r": "Pearson correlation",
    "spearman_r": "Spearman rank correlation", "median_absolute_error": "Median absolute error",
    "baseline_median_mae": "Baseline MAE (always predicting the train median)",
    "baseline_median_rmse": "Baseline RMSE (always predicting the train median)",
    "mae_gain_over_baseline": "MAE gain over the baseline (baseline MAE − model MAE)",
}

# A binary task scores the positive class only (metrics.py): its ROC-AUC and average precision say so.
BINARY_LABELS = {"roc_auc_macro": "ROC-AUC", "roc_auc_weighted": "ROC-AUC (weighted: same as above)",
                 "average_precision_macro": "Average precision (positive class)"}


def _metric_rows(per_split: dict, task: str | None = None):
    """Rows of the metrics table: one per metric, a column per split, test with its 95% interval."""
    ci = per_split.get("test", {}).get("ci95") or {}
    if task == "regression":
        labels = REGRESSION_LABELS
    else:
        labels = {**METRIC_LABELS, **(BINARY_LABELS if task == "binary" else {})}
    rows = []
    for key, label in labels.items():
        if any(key in m for m in per_split.values()):
            rows.append({"label": label, "values": {s: per_split[s].get(key) for s in per_split},
                         "ci": ci.get(key)})
    return rows


def _citations(summary: dict) -> list[str]:
    keys = ["ludwig", "timm"]
    name = summary.get("model", {}).get("name", "").lower()
    keys += [paper for prefix, paper in BACKBONE_PAPERS if name.startswith(prefix) or f"_{prefix}" in name][:1]
    classes = set(summary.get("classes") or [])
    if classes and classes <= HAM10000_CLASSES:
        keys.append("ham10000")
    return [CITATIONS[k] for k in dict.fromkeys(keys)]


def _figures(summary, predictions, history, classes) -> list[tuple[str, str]]:
    y_true, proba, y_pred = _split_arrays(predictions, classes, "test")
    training = summary.get("training", {})
    selection = training.get("selection")
    figures = [("learning", report_plots.learning_curves(history, training.get("best_epoch"),
                                                         training.get("best_epoch_chosen_by"),
                                                         ("loss",) if selection else ("loss", "accuracy"),
                                                         selection))]
    if len(y_true):
        figures += [("roc", report_plots.roc_curves(y_true, proba, classes)),
                    ("pr", report_plots.pr_curves(y_true, proba, classes)),
                    ("confusion", report_plots.confusion_matrices(y_true, y_pred, classes)),
                    ("reliability", report_plots.reliability_diagram(y_true, proba, classes)),
                    ("confidence", report_plots.confidence_histogram(y_true, proba, classes, y_pred))]
    cv = summary.get("cross_validation")
    if cv:
        o_true, o_proba, o_pred = _split_arrays(predictions, classes, "cross_validation")
        which = "out-of-fold, pooled"
        figures += [("cv-roc", report_plots.roc_curves(o_true, o_proba, classes, which)),
                    ("cv-pr", report_plots.pr_curves(o_true, o_proba, classes, which)),
                    ("cv-confusion", report_plots.confusion_matrices(o_true, o_pred, classes, which))]
    if summary.get("task") == "binary":
        # the delivered threshold: chosen on validation, or with cross-validation on the out-of-fold rows
        v_true, v_proba, _ = _split_arrays(predictions, classes, "cross_validation" if cv else "validation")
        figures.append(("threshold", report_plots.threshold_curves(v_true == classes[1], v_proba[:, 1],
                                                                   summary["threshold"], classes[1],
                                                                   summary.get("threshold_policy"),
                                                                   "out-of-fold, pooled" if cv else "validation")))
    return [(name, html) for name, html in figures if html]


def _confusion_table(predictions, classes, split="test"):
    from sklearn.metrics import confusion_matrix

    y_true, _, y_pred = _split_arrays(predictions, classes, split)
    return confusion_matrix(y_true, y_pred, labels=classes).tolist() if len(y_true) else None


def _regression_figures(summary, predictions, history) -> list[tuple[str, str]]:
    """Learning curves (the number output's loss and errors), predicted against true, and the test
    residuals; no class plots (ROC, PR, confusion, calibration, threshold) for a number."""
    target = summary.get("target_column") or "value"
    training = summary.get("training", {})
    figures = [("learning", report_plots.learning_curves(history, training.get("best_epoch"),
                                                         training.get("best_epoch_chosen_by"),
                                                         metric_names=report_plots_regression.LEARNING_METRICS,
                                                         selection=training.get("selection"))),
               ("scatter", report_plots_regression.predicted_vs_true(predictions, target)),
               ("residuals", report_plots_regression.residual_histogram(predictions)),
               ("residual-vs-true", report_plots_regression.residual_vs_true(predictions, target=target))]
    return [(name, html) for name, html in figures if html]


def _saliency(summary, predictions, classes, images_dir, ludwig_model):
    try:
        return report_images.grad_cam_overlays(predictions, classes, images_dir, ludwig_model,
                                               summary.get("model", {}).get("image_size", 224), summary.get("task"))
    except Exception as err:  # saliency is illustration: never lose the report over it
        return [], f"Grad-CAM failed on this backbone ({type(err).__name__}: {err})"


def _environment() -> Environment:
    # A package, not a folder beside this file: found the same way from a checkout and from a wheel.
    env = Environment(loader=PackageLoader("image_learner.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, digits=3: "–" if v is None or (isinstance(v, float) and np.isnan(v)) \
        else f"{v:.{digits}f}"
    return env


def _per_split(output_dir, summary, predictions, classes) -> dict:
    """The run's metrics.json when there is one (same functions, same predictions.csv), else recomputed."""
    metrics_path = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            return json.load(handle)
    seed = int(summary.get("split", {}).get("seed", 42))
    if summary.get("task") == "regression":
        return regression_metrics.metrics_by_split(predictions, seed)
    return metrics.metrics_by_split(predictions, classes, seed)


CV_COLUMNS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc_macro")
CV_REGRESSION_COLUMNS = ("mae", "rmse", "r2", "spearman_r")


def _cross_validation_section(summary, cv_metrics, predictions, classes, ensemble=None) -> dict | None:
    """The cross-validation section: fold table with mean ± sd, pooled out-of-fold metrics with
    intervals, the spread of the headline metric across folds and, for classes, the pooled confusion matrix;
    with --ensemble folds / folds+refit, the ensemble against the refit on the held-out test rows."""
    if not cv_metrics:
        return None
    regression = summary.get("task") == "regression"
    if regression:
        labels, keys, spread = REGRESSION_LABELS, CV_REGRESSION_COLUMNS, ("mae", "MAE")
    else:
        labels = {**METRIC_LABELS, **(BINARY_LABELS if summary.get("task") == "binary" else {})}
        keys, spread = CV_COLUMNS, ("balanced_accuracy", "balanced accuracy")
    columns = [(c, labels[c]) for c in keys if any(f.get(c) is not None for f in cv_metrics["folds"])]
    pooled = cv_metrics["pooled"]
    return {"facts": summary.get("cross_validation", {}), "folds": cv_metrics["folds"], "columns": columns,
            "mean": cv_metrics["mean"], "sd": cv_metrics["sd"],
            "pooled_rows": [{"label": label, "value": pooled.get(key), "ci": (pooled.get("ci95") or {}).get(key)}
                            for key, label in labels.items() if key in pooled],
            "interval_basis": _interval_basis(pooled, "out-of-fold images"),
            "confusion": None if regression else _confusion_table(predictions, classes, "cross_validation"),
            "spread": report_plots.fold_spread(cv_metrics["folds"], spread[0], spread[1], pooled.get(spread[0])),
            "ensemble": _ensemble_rows(ensemble, labels, keys)}


def _ensemble_rows(ensemble: dict | None, labels: dict, keys) -> dict | None:
    """The fold ensemble and the refit on the same test rows: per metric, each value with its interval."""
    if not ensemble:
        return None
    rows = []
    for key in keys:
        cells = [((ensemble.get(side) or {}).get(key), ((ensemble.get(side) or {}).get("ci95") or {}).get(key))
                 for side in ("ensemble_test", "refit_test")]
        if any(value is not None for value, _ in cells):
            rows.append({"label": labels[key], "cells": cells})
    return {**ensemble, "rows": rows}


def _interval_basis(split_metrics: dict, what: str) -> str:
    """The sentence on what the split's intervals rest on; a metrics.json written before groups were
    resampled (no "ci95_basis") resampled images one by one, and says so."""
    basis = split_metrics.get("ci95_basis")
    if basis:
        return bootstrap.describe(basis, what)
    if split_metrics.get("ci95"):
        return f"95% intervals over 1,000 resamples of the {what}, resampled one by one (not by group)"
    return f"1,000 resamples of the {what}"  # no such split: no intervals shown
def _epoch_selection(summary, history) -> dict:
    """The per-epoch table of the metric that picked the kept epoch, its validation size, and the note
    when that validation split is too small to choose by (report_selection)."""
    training = summary.get("training", {})
    selection = training.get("selection")
    return {"rows": report_selection.epoch_rows(history, selection, training.get("best_epoch")),
            "note": report_selection.small_validation_note(selection),
            "size": report_plots.validation_size_text(selection),
            "metric": ((selection or {}).get("column") or "").removeprefix("validation_").replace("_", " ")}


def build_report(output_dir: str, images_dir: str | None = None, ludwig_model=None) -> str:
    """Write ``output_dir/report.html`` from the run's files; returns its path."""
    import plotly.offline

    started = time.time()
    summary, predictions, history, config = _read_run(output_dir)
    classes = _class_order(predictions)
    per_split = _per_split(output_dir, summary, predictions, classes)
    cv_metrics = per_split.pop("cross_validation", None)
    ensemble = per_split.pop("ensemble", None)  # --ensemble: shown in the cross-validation section
    subgroup_section = report_subgroups.section(per_split.pop("subgroups", None))
    trust_found = per_split.pop("trust", None)
    saliency, saliency_reason = _saliency(summary, predictions, classes, images_dir, ludwig_model)
    common = dict(s=summary, metric_rows=_metric_rows(per_split, summary.get("task")), metric_splits=list(per_split),
                  saliency=saliency, saliency_reason=saliency_reason, citations=_citations(summary),
                  config_yaml=yaml.safe_dump(config, sort_keys=False) if config else "",
                  plotly_js=plotly.offline.get_plotlyjs(),
                  n_rows={s: int((predictions["split"] == s).sum()) for s in SPLITS},
                  interval_basis=_interval_basis(per_split.get("test", {}), "test images"),
                  selection=_epoch_selection(summary, history),
                  health=report_health.health_section(output_dir, summary, images_dir),
                  straddling=report_health.straddling_groups(summary, None, images_dir),
                  subgroups=subgroup_section,
                  trust=report_trust.section(trust_found, predictions, classes, summary.get("task")),
                  audit=report_audit.audit_section(output_dir, summary, predictions, images_dir))
    if summary.get("task") == "regression":
        gallery, gallery_reason = report_images.largest_errors_gallery(predictions, images_dir)
        html = _environment().get_template("report_regression.html.j2").render(
            **common, figures=dict(_regression_figures(summary, predictions, history)), gallery=gallery,
            gallery_reason=gallery_reason, target=summary.get("target_column") or "value",
            baseline=per_split.get("train", per_split.get("test", {})).get("baseline_median"),
            value_summary=report_plots_regression.value_summary(predictions), build_seconds=time.time() - started,
            cv=_cross_validation_section(summary, cv_metrics, predictions, classes, ensemble))
    else:
        gallery, gallery_reason = report_images.misclassified_gallery(predictions, classes, images_dir)
        html = _environment().get_template("report.html.j2").render(
            **common, classes=classes,
            absent={split: m["classes_absent"] for split, m in per_split.items() if m.get("classes_absent")},
            per_class=per_split.get("test", {}).get("per_class", []),
            confusion=_confusion_table(predictions, classes),
            figures=dict(_figures(summary, predictions, history, classes)), gallery=gallery,
            gallery_reason=gallery_reason, build_seconds=time.time() - started,
            class_totals=predictions["true_label"].value_counts().to_dict(),
            cv=_cross_validation_section(summary, cv_metrics, predictions, classes, ensemble))
    path = os.path.join(output_dir, "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(html)
    return path
