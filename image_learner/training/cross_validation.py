"""k-fold cross-validation: the fold loop, its out-of-fold predictions and metrics, and the final model.

Folds come from the prepared data (``fold`` column, dataset_prep / split_utils.assign_folds): stratified,
grouped, seeded. Each fold's model trains on the other folds, with a validation part carved from them
(split_utils.carve_validation) for early stopping and the kept epoch (and, binary, the fold's decision
threshold), then predicts its own fold: every fold row gets exactly one out-of-fold prediction. The
delivered model is then trained on every fold row for the median kept epoch, without validation; it
predicts the held-out test rows, if any. Folds run one after another; each fold's scratch files live in
the run's scratch folder and its model is dropped once it has predicted.

Each fold's validation part is checked before it trains (provenance.fold_validation_warnings) and each
fold says why its epoch was kept and how its threshold was set; a regression's out-of-fold baseline is the
median of that fold's training rows.

The metrics are task-agnostic: ``summarise`` takes a ``score(predictions, splits)`` function shaped like
metrics.metrics_by_split (classification) or regression_metrics.metrics_by_split (regression).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from image_learner.evaluation import bootstrap, class_decision, evaluation
from image_learner.training import ludwig_config, model_fit
from image_learner.training import provenance
import split_utils
from image_learner.run_files import log

SPLIT_NAME = "cross_validation"  # the split column of predictions.csv for out-of-fold rows


@dataclass
class CrossValidation:
    final: model_fit.Fit  # trained on every fold row, saved in the model directory
    final_options: object  # TrainingOptions of the final fit (epochs = median kept epoch, no early stop)
    proba: np.ndarray  # every row: out-of-fold for fold rows, the final model's for held-out test rows
    predicted: np.ndarray  # labels: fold rows by their fold's threshold, test rows by ``threshold``
    threshold: float | None  # binary: the delivered model's, tuned on the pooled out-of-fold predictions
    fold_thresholds: list  # binary: each fold's, tuned on its validation part
    kept_epochs: list[int]
    fold_sizes: list[dict]  # per fold: train, validation and predicted (out-of-fold) rows
    history: pd.DataFrame  # per fold and epoch (``fold`` column), Ludwig's training history
    threshold_provenance: str | None = None  # binary: how ``threshold`` was set (provenance.threshold_choice)
    fold_provenance: list | None = None  # per fold: why its kept epoch, and (binary) how its threshold was set
    warnings: list | None = None  # per fold validation parts that cannot choose well, an untuned threshold
    fold_baselines: list | None = None  # regression: each fold's training-row median (its out-of-fold baseline)
    ensemble: dict | None = None  # --ensemble folds / folds+refit: fold_ensemble.make_record, and "weights" (paths)
    refit_test: np.ndarray | None = None  # with an ensemble: the refit's outputs on the test rows (its comparison)
    fold_decisions: list | None = None  # --class-decision balanced: each fold's (class_decision.choose), on its
    # validation part; the delivered model's is chosen on the pooled out-of-fold rows (fit_and_score)


def final_epochs(kept_epochs) -> int:
    """The median kept epoch across folds, halves rounded up (median 3.5 -> 4), at least 1."""
    return max(1, int(math.floor(float(np.median(kept_epochs)) + 0.5)))


def fold_rows(data, fold: int, validation_share, seed: int) -> pd.DataFrame:
    """The rows one fold trains on: every other fold as train (0), part of it carved as validation (1),
    groups kept whole, stratified, seeded. ``validation_share``: the split probabilities (only the
    validation share of train + validation counts)."""
    table = data.table
    rows = table[(table["split"] == 0) & (table["fold"] != fold)].copy()
    rows["split"] = split_utils.carve_validation(rows["stratum"].to_numpy(), np.zeros(len(rows), dtype=np.int64),
                                                 rows["group"].to_numpy(), validation_share, seed)
    return rows


def run(data, opts, split_probabilities, work: str, model_dir: str, timer, ddp_workers: int = 0,
        ensemble: str = "refit") -> CrossValidation:
    """Train and predict every fold, then the final model (into ``model_dir``); ``ddp_workers``: see model_fit.fit.
    ``ensemble`` (fold_ensemble.MODES) other than "refit": each fold's kept-epoch weights are kept (copied into
    ``model_dir``) and each fold also predicts the test rows; the test rows' outputs are then the ensemble's."""
    table = data.table
    k = int(table["fold"].max())
    in_folds = (table["split"] == 0).to_numpy()
    proba = np.full((len(table), model_fit.n_outputs(data)), np.nan)
    predicted = np.empty(len(table), dtype=object)
    kept, sizes, thresholds, histories, why, warnings, baselines = [], [], [], [], [], [], []
    decisions = []  # multiclass, --class-decision balanced: each fold's, like a binary fold's threshold
    test = ~in_folds
    members = []  # with an ensemble: per fold, its weights file, class order, scaling and test-row outputs
    for fold in range(1, k + 1):
        rows = fold_rows(data, fold, split_probabilities, opts.random_seed)
        target = (table["fold"] == fold).to_numpy() & in_folds
        # dataset_prep's check_split does not see the folds' validation parts (carved here): check each one
        fold_warnings = provenance.fold_validation_warnings(fold, rows, data.task)
        for warning in fold_warnings:
            log(f"WARNING: {warning}")
        warnings += fold_warnings
        log(f"fold {fold} of {k}: training on {int((rows['split'] == 0).sum())} images (validation "
            f"{int((rows['split'] == 1).sum())}), then predicting its {int(target.sum())} held-out images")
        fold_dir = os.path.join(work, f"fold-{fold}")
        with timer.stage(f"fold {fold} of {k}: training {opts.model_name} for up to {opts.epochs} epochs"):
            fit = model_fit.fit(data, rows, opts, fold_dir, os.path.join(fold_dir, "model"), ddp_workers)
        with timer.stage(f"fold {fold} of {k}: predicting"):
            scored = model_fit.outputs(data, fit, pd.concat([table[target], rows[rows["split"] == 1]]), opts, fold_dir)
        oof, validation = scored[:target.sum()], scored[target.sum():]
        threshold = None
        kept_why, epoch_warning = provenance.kept_epoch_choice(fit.trained.history, data.task, opts.validation_metric,
                                                               f"fold {fold}: ")
        if epoch_warning and not fold_warnings:  # else said already, before training
            log(f"WARNING: {epoch_warning}")
            warnings.append(epoch_warning)
        why.append({"fold": fold, "kept_epoch_chosen_by": kept_why})
        if data.task == "binary":
            choice = model_fit.binary_threshold(data, rows.loc[rows["split"] == 1, "label"], validation[:, 1], opts,
                                                "validation rows", f"fold {fold}'s validation part")
            threshold = choice.value
            thresholds.append(threshold)
            why[-1]["threshold_policy"] = choice.provenance
        offsets = None
        if data.task == "multiclass" and opts.class_decision == "balanced":
            part = rows[rows["split"] == 1]
            decision = class_decision.choose(part["label"], validation, model_fit.class_order(data),
                                             rows.loc[rows["split"] == 0, "label"], f"validation rows of fold {fold}",
                                             bootstrap.cluster_ids(part), opts.random_seed)
            offsets = decision["offsets"]
            decisions.append(decision)
            why[-1]["decision_policy"] = class_decision.describe(decision)
            log(f"fold {fold} of {k}: {why[-1]['decision_policy']}")
        if data.task == "regression":  # the out-of-fold baseline: what this fold's model could have learnt
            baselines.append(float(np.median(rows.loc[rows["split"] == 0, "label"].astype(float))))
        proba[target] = oof
        predicted[target] = evaluation.predicted_labels(data.task, model_fit.class_order(data), oof, threshold,
                                                        offsets)
        kept.append(fit.trained.best_epoch)
        sizes.append({"fold": fold, "train": int((rows["split"] == 0).sum()),
                      "validation": int((rows["split"] == 1).sum()), "predicted": int(target.sum())})
        histories.append(fit.trained.history.assign(fold=fold))
        log(f"fold {fold} of {k}: kept epoch {fit.trained.best_epoch} of {len(fit.trained.history)}")
        if ensemble != "refit":
            with timer.stage(f"fold {fold} of {k}: keeping its model for the ensemble"):
                members.append(_keep_member(data, fit, table[test], opts, fold_dir, work, fold))
        release_fold(fit, fold_dir)

    final_opts = replace(opts, epochs=final_epochs(kept), early_stop=0)
    all_rows = table[in_folds].copy()  # every fold row trains; no validation rows, so no early stop
    log(f"final model: training on all {len(all_rows)} non-test images for {final_opts.epochs} epoch(s) "
        f"(the median kept epoch of the folds: {', '.join(map(str, kept))})")
    with timer.stage(f"final model: training {opts.model_name} for {final_opts.epochs} epoch(s)"):
        final = model_fit.fit(data, all_rows, final_opts, os.path.join(work, "final"), model_dir, ddp_workers)
    threshold = choice = None
    if data.task == "binary":
        choice = model_fit.binary_threshold(data, table.loc[in_folds, "label"], proba[in_folds, 1], opts,
                                            "out-of-fold rows", "the pooled out-of-fold predictions")
        threshold = choice.value
        if choice.warning:
            log(f"WARNING: {choice.warning}")
            warnings.append(choice.warning)
    record = refit_test = None
    if test.any():
        with timer.stage("final model: predicting the held-out test images"):
            proba[test] = model_fit.outputs(data, final, table[test], opts, work)
    if members:
        record, refit_test = _ensemble(ensemble, members, model_dir, proba[test] if test.any() else None)
        if test.any():  # the delivered model's test outputs: the ensemble's
            proba[test] = record["test_outputs"]
    if test.any():
        predicted[test] = evaluation.predicted_labels(data.task, model_fit.class_order(data), proba[test], threshold)
    history = pd.concat(histories, ignore_index=True)
    return CrossValidation(final, final_opts, proba, predicted, threshold, thresholds, kept, sizes,
                           history[["fold", *[c for c in history.columns if c != "fold"]]],
                           choice.provenance if choice else None, why, warnings, baselines or None,
                           record, refit_test, decisions or None)


def _keep_member(data, fit, test_rows: pd.DataFrame, opts, fold_dir: str, work: str, fold: int) -> dict:
    """A fold model kept for the ensemble: its kept-epoch weights (Ludwig's best model, saved in the fold's
    model folder) copied out of the scratch folder the fold drops, its class order and target scaling, and
    its outputs on the test rows (computed now, while it is loaded: the ensemble's test evaluation)."""
    import json

    from image_learner.model import model_weights

    kept = os.path.join(work, "ensemble", f"fold-{fold}.safetensors")
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copyfile(os.path.join(fit.trained.model_dir, model_weights.WEIGHTS), kept)
    with open(os.path.join(fit.trained.model_dir, "training_set_metadata.json")) as handle:
        vocabulary = json.load(handle)[ludwig_config.LABEL_FEATURE].get("idx2str")
    outputs = model_fit.outputs(data, fit, test_rows, opts, fold_dir) if len(test_rows) else None
    return {"weights": kept, "label_vocabulary": vocabulary if data.task == "multiclass" else None,
            "target_scaling": fit.target_scaling, "test_outputs": outputs}


def _ensemble(mode: str, members: list[dict], model_dir: str, refit_test):
    """(the manifest's ensemble record plus "test_outputs", the members' mean on the test rows (None without
    test rows); the refit's test outputs): the fold weights copied into ``model_dir`` as fold_ensemble names them."""
    from image_learner.model import fold_ensemble

    for k, member in enumerate(members, 1):
        shutil.copyfile(member["weights"], os.path.join(model_dir, fold_ensemble.member_name(k)))
    record = fold_ensemble.make_record(mode, members)
    outputs = None
    if refit_test is not None:
        outputs = fold_ensemble.averaged([m["test_outputs"] for m in members]
                                         + ([refit_test] if mode == "folds+refit" else []))
    log(f"ensemble: {fold_ensemble.describe(record)}")
    return {**record, "test_outputs": outputs}, refit_test


def release_fold(fit, fold_dir: str) -> None:
    """Drop a fold's model and scratch files before the next fold, so memory and disk hold one fold."""
    fit.trained.ludwig_model = None
    shutil.rmtree(fold_dir, ignore_errors=True)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is always there when a fold has trained
        pass


def _numbers(values: dict) -> dict:
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n"}


def summarise(predictions: pd.DataFrame, score, kept_epochs, thresholds=(), alphas=()) -> dict:
    """metrics.json's "cross_validation" entry from predictions.csv's out-of-fold rows: per fold the
    metrics (``score`` on that fold alone), its size and kept epoch; the mean and sample sd (ddof 1)
    across folds of every number; and the pooled out-of-fold metrics with seeded bootstrap intervals (the
    rows' sample id and duplicate group columns drawn whole, bootstrap.py; "ci95_basis" counts the groups).

    ``score(predictions, splits)`` scores the rows whose ``split`` is in ``splits``, with intervals for
    "test" (metrics.metrics_by_split's shape); the fold rows are scored under those names. ``thresholds``
    (binary) and ``alphas`` (the balanced decision's): each fold's, recorded with it."""
    oof = predictions[predictions["split"] == SPLIT_NAME]
    folds = []
    for i, fold in enumerate(sorted(oof["fold"].astype(int).unique())):
        part = oof[oof["fold"].astype(int) == fold].assign(split="validation")
        values = score(part, ("validation",))["validation"]
        entry = {"fold": int(fold), **values, "kept_epoch": int(kept_epochs[i])}
        if thresholds:
            entry["threshold"] = float(thresholds[i])
        if alphas:
            entry["decision_alpha"] = float(alphas[i])
        folds.append(entry)
    names = sorted(set.intersection(*(set(_numbers(f)) for f in folds))) if folds else []
    names = [n for n in names if n != "fold"]
    table = pd.DataFrame([{n: f.get(n) for n in names} for f in folds], dtype=float)
    pooled = score(oof.assign(split="test"), ("test",))["test"]
    return {"k": len(folds), "folds": folds,
            "mean": {n: _finite(table[n].mean()) for n in names},
            "sd": {n: _finite(table[n].std(ddof=1)) for n in names},
            "pooled": pooled}


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
