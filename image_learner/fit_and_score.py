"""Train and score, the two ways a run does it: one split (validation picks the kept epoch and the binary
threshold, test is scored), or k folds and a final model (out-of-fold rows are scored). Each writes
predictions.csv (with the rows' subgroup slices), computes metrics.json's numbers, and sets the
out-of-distribution threshold on rows the model never trained on. pipeline.py runs the stages around it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from image_learner.data.input_utils import OUTPUT_TEXT_COLUMNS, write_output_csv
from image_learner.evaluation import bootstrap, calibration, class_decision, evaluation, ood, subgroups, trust
from image_learner.run_files import log
from image_learner.training import cross_validation, ludwig_config, model_fit, provenance


def _write_predictions(data, predictions: pd.DataFrame, out: str) -> tuple[pd.DataFrame, list, dict]:
    """predictions.csv, with each row's subgroup slices (``subgroup_<column>``) when asked for; returns the
    table, the subgroup columns and their slicing rules."""
    columns = list(data.table.columns[data.table.columns.str.startswith(subgroups.PREFIX)].str[len(subgroups.PREFIX):])
    rules = {}
    if columns:
        predictions, rules = subgroups.attach(predictions, data.table, columns)
    write_output_csv(predictions, os.path.join(out, "predictions.csv"),
                     OUTPUT_TEXT_COLUMNS + tuple(subgroups.PREFIX + c for c in columns))
    return predictions, columns, rules


def _add_subgroups(all_metrics: dict, data, predictions, columns, rules, seed: int) -> None:
    if columns:
        all_metrics["subgroups"] = subgroups.subgroup_report(predictions, columns, rules, data.task,
                                                             model_fit.class_order(data), seed)


def _ood_record(task: str, proba, fit_rows, test_rows, keep_rate: float, fitted_on: str):
    """(the out-of-distribution threshold fitted on ``fit_rows`` (ood.fit), the test rows it flags); none for a
    regression, and a warning saying why when one was asked for and cannot be set."""
    if task == "regression":
        return None, None
    proba = np.asarray(proba)
    test = proba[test_rows]
    proba = proba[fit_rows]
    record = ood.fit(proba, keep_rate, fitted_on)
    if record is None and keep_rate:
        log(f"WARNING: no out-of-distribution threshold: {len(proba)} {fitted_on} images, and --ood-keep-rate "
            f"{keep_rate:g} needs at least {ood.min_rows(keep_rate)} to keep its promise; predict flags nothing")
    elif record:
        log(f"out-of-distribution threshold: top-class probability {record['threshold']:.6g} (keeps "
            f"{keep_rate:.0%} of {record['rows']} {fitted_on} images)")
    return record, (ood.flags(test, record) if record else None)


def single_split(data, opts, out: str, work: str, timer, ddp_workers: int = 0,
                 ood_keep_rate: float = ood.DEFAULT_KEEP_RATE, coverage: float = trust.DEFAULT_COVERAGE) -> "Outcome":
    """One fit on the train split (validation picks the kept epoch, test evaluated each epoch)."""
    with timer.stage(f"training {opts.model_name} for up to {opts.epochs} epochs"):
        fit = model_fit.fit(data, data.table, opts, work, os.path.join(out, "model"), ddp_workers)
    log(f"device: {fit.trained.device}; best epoch {fit.trained.best_epoch} of {len(fit.trained.history)}")
    fit.trained.history.to_csv(os.path.join(out, "training_history.csv"), index=False)
    with timer.stage("predicting every image"):
        raw = model_fit.outputs(data, fit, data.table, opts, work)
    classes = model_fit.class_order(data)
    validation = data.table["split"].to_numpy() == 1
    # temperature, threshold and conformal quantile: all fitted on validation rows, never test
    temperature, proba = trust.calibrate(data.task, classes, data.table["label"], raw, validation)
    threshold = choice = None
    epoch_provenance, epoch_warning = provenance.kept_epoch_choice(fit.trained.history, data.task,
                                                                   opts.validation_metric)
    warnings = [epoch_warning] if epoch_warning else []
    if data.task == "binary":  # chosen on validation (never test), then used for every split, table and plot
        choice = model_fit.binary_threshold(data, data.table["label"][validation], proba[validation, 1], opts)
        threshold = choice.value
        warnings += [choice.warning] if choice.warning else []
    decision = None
    if data.task == "multiclass" and opts.class_decision == "balanced":  # on validation rows too, never test
        train = data.table["split"].to_numpy() == 0
        decision = class_decision.choose(data.table["label"][validation], proba[validation], classes,
                                         data.table["label"][train], "validation rows",
                                         bootstrap.cluster_ids(data.table[validation]), opts.random_seed)
        log(class_decision.describe(decision))
    for warning in warnings:
        log(f"WARNING: {warning}")
    trust_record = _trust_record(data, classes, proba, validation, coverage, temperature, "validation split")
    labels = evaluation.predicted_labels(data.task, classes, proba, threshold, decision and decision["offsets"])
    predictions = evaluation.predictions_table(data, proba, labels, classes)
    predictions = trust.add_columns(predictions, data.task, classes, _point_outputs(data, proba), trust_record)
    predictions, columns, rules = _write_predictions(data, predictions, out)
    with timer.stage("computing metrics (with bootstrap intervals)"):
        all_metrics = evaluation.metrics_by_split(data.task, predictions, classes, opts.random_seed)
        all_metrics["trust"] = trust.summary(predictions, data.task, classes, trust_record, opts.random_seed)
        _add_subgroups(all_metrics, data, predictions, columns, rules, opts.random_seed)
    split = data.table["split"].to_numpy()
    record, test_flags = _ood_record(data.task, proba, split == 1, split == 2, ood_keep_rate, "validation")
    return Outcome(fit, opts, threshold, all_metrics, threshold_provenance=choice.provenance if choice else None,
                   epoch_provenance=epoch_provenance, warnings=warnings, ood=record, ood_test_flags=test_flags,
                   trust=trust_record, class_decision=decision)


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
    threshold_provenance: str | None = None  # how the binary threshold was set (provenance.threshold_choice)
    epoch_provenance: str = ""  # why the delivered model's epoch was kept (provenance.kept_epoch_choice)
    warnings: list = field(default_factory=list)  # found while training: untuned threshold, tied epochs
    ood: dict | None = None  # the manifest's out-of-distribution record (ood.fit)
    ood_test_flags: np.ndarray | None = None  # which test rows it flags (in-distribution: false flags)
    trust: dict | None = None  # the manifest's trust record (trust.fit_record)
    class_decision: dict | None = None  # --class-decision balanced: class_decision.choose's record


def cross_validate(data, opts, split_probabilities, out: str, work: str, timer, ddp_workers: int = 0,
                   ood_keep_rate: float = ood.DEFAULT_KEEP_RATE, coverage: float = trust.DEFAULT_COVERAGE,
                   ensemble: str = "refit") -> Outcome:
    """The folds, then the final model; predictions.csv holds the out-of-fold predictions (``fold``). With
    ``ensemble`` (fold_ensemble.MODES) other than "refit", the test rows are the fold ensemble's and
    metrics.json's "ensemble" compares it with the refit on them."""
    cv = cross_validation.run(data, opts, split_probabilities, work, os.path.join(out, "model"), timer, ddp_workers,
                              ensemble)
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
    predicted, threshold, threshold_provenance = cv.predicted, cv.threshold, cv.threshold_provenance
    if data.task == "binary":  # retuned on the scaled out-of-fold P(positive): the same cut, on what is shown
        choice = model_fit.binary_threshold(data, data.table["label"][pooled], proba[pooled, 1], opts,
                                            "out-of-fold rows", "the pooled out-of-fold predictions")
        threshold, threshold_provenance = choice.value, choice.provenance
        predicted = np.where(pooled, cv.predicted, evaluation.predicted_labels(data.task, classes, proba, threshold))
        cv.fold_thresholds = [trust.scaled_threshold(t, temperature) for t in cv.fold_thresholds]
    decision = None
    if data.task == "multiclass" and opts.class_decision == "balanced":  # on the scaled pooled out-of-fold
        # probabilities, as the threshold above; each fold row keeps its own fold's decision (cv.predicted)
        decision = class_decision.choose(data.table["label"][pooled], proba[pooled], classes,
                                         data.table["label"][pooled], "pooled out-of-fold rows",
                                         bootstrap.cluster_ids(data.table[pooled]), opts.random_seed)
        log(class_decision.describe(decision))
        predicted = np.where(pooled, cv.predicted,
                             evaluation.predicted_labels(data.task, classes, proba, None, decision["offsets"]))
    trust_record = _trust_record(data, classes, proba, pooled, coverage, temperature,
                                 "pooled out-of-fold predictions")
    predictions = evaluation.predictions_table(data, proba, predicted, classes,
                                               np.where(fold > 0, cross_validation.SPLIT_NAME, "test"),
                                               pd.array(np.where(fold > 0, fold, None), dtype="Int64"))
    predictions = trust.add_columns(predictions, data.task, classes, _point_outputs(data, proba), trust_record)
    predictions, columns, rules = _write_predictions(data, predictions, out)
    baseline = None
    if data.task == "regression":  # the median of each model's training rows: the final model's for test rows,
        # each fold model's for its out-of-fold rows (never a median that includes the rows it scores)
        baseline = pd.Series(np.where(fold > 0, np.asarray([np.nan, *cv.fold_baselines])[fold],
                                      np.median(data.table.loc[fold > 0, "label"].astype(float))),
                             index=predictions.index)

    def score(part, splits):
        return evaluation.metrics_by_split(data.task, part, classes, opts.random_seed, splits,
                                           None if baseline is None else baseline.loc[part.index].to_numpy())

    with timer.stage("computing metrics (with bootstrap intervals)"):
        all_metrics = {**score(predictions, ("test",)),
                       "cross_validation": cross_validation.summarise(
                           predictions, score, cv.kept_epochs, cv.fold_thresholds,
                           [d["alpha"] for d in cv.fold_decisions or ()]),
                       "trust": trust.summary(predictions, data.task, classes, trust_record, opts.random_seed)}
        _add_subgroups(all_metrics, data, predictions, columns, rules, opts.random_seed)
        if cv.ensemble:
            all_metrics["ensemble"] = _ensemble_comparison(data, cv, temperature, threshold, fold, score,
                                                            opts.random_seed, decision and decision["offsets"])
    facts = {"k": len(cv.kept_epochs), "fold_sizes": cv.fold_sizes, "kept_epochs": cv.kept_epochs,
             "final_epochs": cv.final_options.epochs,
             "final_epochs_rule": "median kept epoch across folds, halves rounded up",
             "final_training_rows": cv.final.train_rows, "fold_thresholds": cv.fold_thresholds or None,
             "threshold_chosen_on": "pooled out-of-fold predictions" if data.task == "binary" else None,
             "fold_decision_alphas": [d["alpha"] for d in cv.fold_decisions] if cv.fold_decisions else None,
             "fold_provenance": cv.fold_provenance, "fold_baselines": cv.fold_baselines,
             "ensemble": {k: v for k, v in cv.ensemble.items() if k != "test_outputs"} if cv.ensemble else None}
    record, test_flags = _ood_record(data.task, proba, fold > 0, fold == 0, ood_keep_rate, "out-of-fold")
    return Outcome(cv.final, cv.final_options, threshold, all_metrics, facts, threshold_provenance,
                   "the median kept epoch of the folds (final model: no validation)", cv.warnings, record, test_flags,
                   trust_record, decision)


def _ensemble_comparison(data, cv, temperature, threshold, fold, score, seed: int, offsets=None) -> dict:
    """metrics.json's "ensemble": the delivered fold ensemble and the refit on the same held-out test rows,
    each scaled by the one temperature and cut by the one threshold or decided with the one set of class
    offsets (all fitted on the pooled out-of-fold rows of single fold models: the ensemble has no out-of-fold
    rows of its own)."""
    from image_learner.model import fold_ensemble

    classes = model_fit.class_order(data)
    test = fold == 0
    record = {"mode": cv.ensemble["mode"], "members": cv.ensemble["k"] + (cv.ensemble["mode"] == "folds+refit"),
              "description": fold_ensemble.describe(cv.ensemble), "test_rows": int(test.sum()),
              "calibrated_on": fold_ensemble.CALIBRATED_ON}
    if not test.any():
        return {**record, "ensemble_test": None, "refit_test": None,
                "note": "no held-out test rows (a split column's test rows): nothing to compare on"}
    outputs, predicted = {}, {}
    for name, test_outputs in (("ensemble_test", cv.proba[test]), ("refit_test", cv.refit_test)):
        raw = np.array(cv.proba, dtype=float)
        raw[test] = test_outputs
        proba = raw if temperature is None else calibration.apply_temperature(raw, temperature)
        labels = evaluation.predicted_labels(data.task, classes, proba, threshold, offsets)
        table = evaluation.predictions_table(data, proba, labels, classes, np.where(test, "test", "cv"))
        outputs[name] = score(table, ("test",))["test"]
        predicted[name] = np.asarray(labels)[test]
    truth = table["true_value" if data.task == "regression" else "true_label"].to_numpy()[test]
    paired = fold_ensemble.paired_difference(truth, predicted["ensemble_test"], predicted["refit_test"],
                                             bootstrap.cluster_ids(table[test]), data.task, seed=seed)
    metric, low_high = paired["metric"], paired["ci95"]
    values = [outputs[side].get(metric) for side in ("ensemble_test", "refit_test")]
    ensemble_value, refit_value = (float("nan") if v is None else v for v in values)
    log(f"fold ensemble vs refit on the {record['test_rows']} test images: {metric.replace('_', ' ')} "
        f"{ensemble_value:.3f} vs {refit_value:.3f} (difference {paired['ensemble_minus_refit']:+.3f}, "
        f"paired 95% interval {low_high[0]:+.3f} to {low_high[1]:+.3f}){_accuracy_gap(outputs, paired)}")
    return {**record, **outputs, "paired_difference": paired}


def _accuracy_gap(outputs: dict, paired: dict) -> str:
    """The log's accuracy clause of the ensemble comparison (a classification's; empty for a regression)."""
    if "accuracy" not in paired:
        return ""
    gap = paired["accuracy"]
    return (f"; accuracy {outputs['ensemble_test']['accuracy']:.3f} vs {outputs['refit_test']['accuracy']:.3f} "
            f"(difference {gap['ensemble_minus_refit']:+.3f}, {gap['ci95'][0]:+.3f} to {gap['ci95'][1]:+.3f})")
