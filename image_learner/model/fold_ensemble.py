"""Fold ensembles (``--ensemble``): the K cross-validation fold models kept in the model ZIP, their outputs averaged.

``refit`` (the default) delivers the model retrained on every non-test row, as before. ``folds`` delivers the
mean of the K fold models' outputs (probabilities, or a regression's values in the target's unit); ``folds+refit``
the mean of the K fold models and the refit (K + 1 members, each weighing the same). The refit is trained in
every mode: it is the model ZIP's main weights (Grad-CAM, ONNX, the audit) and the ensemble's comparison.

Each fold model has the refit's architecture and its own weights file, ``fold_<k>_weights.safetensors``
(Ludwig's best-epoch weights of that fold), and its own Ludwig class order and target scaling (they come
from the fold's training rows): the manifest's ``ensemble`` record keeps both per fold. Nothing of it is
trusted: the record is checked here (``check_record``), the members of the ZIP must be exactly the ones it
names (``check_members``), and each file is held to its network's tensors like the main weights
(model_archive). Pure: no Ludwig, no torch.
"""

from __future__ import annotations

import re

import numpy as np

from image_learner.errors import InputError

MODES = ("refit", "folds", "folds+refit")
MAX_FOLDS = 20  # members a model ZIP may hold: each is a whole network's weights
MEMBER = re.compile(r"fold_([1-9][0-9]?)_weights\.safetensors")
CALIBRATED_ON = ("pooled out-of-fold predictions of the single fold models (the ensemble itself has no "
                 "out-of-fold rows)")
RECORD_FIELDS = ("mode", "k", "folds", "calibrated_on")
FOLD_FIELDS = ("label_vocabulary", "target_scaling")


def member_name(fold: int) -> str:
    """The model ZIP's file of fold ``fold``'s weights (1-based)."""
    return f"fold_{fold}_weights.safetensors"


def members(record: dict | None) -> list[str]:
    """The fold weight files a checked ``ensemble`` record names (none without one)."""
    return [member_name(k) for k in range(1, record["k"] + 1)] if record else []


def is_member(name: str) -> bool:
    """Whether a file name inside ``model/`` can be a fold's weights (``check_members`` then holds the set)."""
    match = MEMBER.fullmatch(name)
    return bool(match) and 1 <= int(match.group(1)) <= MAX_FOLDS


def check_mode(mode: str, k: int, tabular: bool) -> None:
    """--ensemble as training accepts it: one of MODES; a fold ensemble needs --cross-validation (2 to MAX_FOLDS
    folds) and, for now, no --tabular-columns (each fold would need its own scaling of the columns)."""
    if mode not in MODES:
        raise InputError(f"--ensemble must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "refit":
        return
    if not k:
        raise InputError(f"--ensemble {mode} needs --cross-validation K (the K fold models it keeps)")
    if k > MAX_FOLDS:
        raise InputError(f"--ensemble {mode} keeps at most {MAX_FOLDS} fold models, got --cross-validation {k}")
    if tabular:
        raise InputError(f"--ensemble {mode} does not yet combine with --tabular-columns: use --ensemble refit")


def make_record(mode: str, folds: list[dict]) -> dict:
    """The manifest's ``ensemble`` record: the mode, the fold count and each fold's class order / target scaling."""
    return {"mode": mode, "k": len(folds), "folds": [{f: fold[f] for f in FOLD_FIELDS} for fold in folds],
            "calibrated_on": CALIBRATED_ON}


def check_record(record, manifest: dict, file: str) -> None:
    """A manifest's ``ensemble`` record as training writes it, against the (checked) rest of the manifest:
    InputError naming ``file`` and the field otherwise."""
    from image_learner.model.model_manifest import expect, is_int, target_scaling_ok

    expect(isinstance(record, dict) and sorted(record) == sorted(RECORD_FIELDS), file, "ensemble", record,
           f"an object with {', '.join(RECORD_FIELDS)}")
    expect(record["mode"] in MODES[1:], file, "ensemble.mode", record["mode"], " or ".join(map(repr, MODES[1:])))
    folds = record["folds"]
    expect(is_int(record["k"], 2, MAX_FOLDS), file, "ensemble.k", record["k"], f"an integer from 2 to {MAX_FOLDS}")
    expect(isinstance(folds, list) and len(folds) == record["k"], file, "ensemble.folds", folds,
           f"one entry per fold ({record['k']}, ensemble.k)")
    expect(record["calibrated_on"] == CALIBRATED_ON, file, "ensemble.calibrated_on", record["calibrated_on"],
           repr(CALIBRATED_ON))
    task, classes = manifest["task"], manifest["classes"]
    for k, fold in enumerate(folds, 1):
        where = f"ensemble.folds[{k - 1}]"
        expect(isinstance(fold, dict) and sorted(fold) == sorted(FOLD_FIELDS), file, where, fold,
               f"an object with {', '.join(FOLD_FIELDS)}")
        vocabulary, scaling = fold["label_vocabulary"], fold["target_scaling"]
        if task == "multiclass":  # the head's width: the main vocabulary's (the meta network is built with it)
            ok = (isinstance(vocabulary, list) and all(isinstance(v, str) for v in vocabulary)
                  and sorted(vocabulary) == sorted(set(vocabulary)) and set(vocabulary) <= set(classes)
                  and len(vocabulary) == len(manifest["label_vocabulary"]))
            expect(ok, file, f"{where}.label_vocabulary", vocabulary,
                   f"{len(manifest['label_vocabulary'])} names from classes")
        else:
            expect(vocabulary is None, file, f"{where}.label_vocabulary", vocabulary, "null")
        if task == "regression":
            expect(target_scaling_ok(scaling), file, f"{where}.target_scaling", scaling,
                   "the fold's training target mean and std")
        else:
            expect(scaling is None, file, f"{where}.target_scaling", scaling, "null for a classification model")


def check_members(names, record: dict | None, file: str) -> None:
    """The fold weight files of a model ZIP (``names``, inside ``model/``) are exactly those ``record`` names:
    a count that does not match the files is refused (InputError naming ``file``)."""
    present = sorted(n for n in names if is_member(n))
    wanted = members(record)
    if sorted(wanted) != present:
        missing = sorted(set(wanted) - set(present))
        extra = sorted(set(present) - set(wanted))
        raise InputError(f"{file}: ensemble.k is {record['k'] if record else 0} but the ZIP holds "
                         f"{len(present)} fold weight file(s)"
                         + (f" (missing {missing[0]})" if missing else "")
                         + (f" ({extra[0]} is not one it names)" if extra else ""))


def fold_manifest(manifest: dict, fold: int) -> dict:
    """The manifest of fold ``fold``'s network (1-based): the delivered one's, with the fold's own class order
    and target scaling (the architecture, options and calibration are the ensemble's)."""
    entry = manifest["ensemble"]["folds"][fold - 1]
    return {**manifest, "label_vocabulary": entry["label_vocabulary"], "target_scaling": entry["target_scaling"]}


def uses_refit(manifest: dict) -> bool:
    """Whether the delivered prediction includes the refit (no ensemble, or ``folds+refit``)."""
    record = manifest.get("ensemble")
    return record is None or record["mode"] == "folds+refit"


def averaged(outputs: list[np.ndarray]) -> np.ndarray:
    """The mean of the members' outputs, each in the delivered columns (class probabilities in ``classes``
    order, or a regression's values in the target's unit): every member weighs the same."""
    if not outputs:
        raise ValueError("no ensemble members to average")
    shapes = {np.shape(o) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on the output shape: {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(o, dtype=float) for o in outputs]), axis=0)


def describe(record: dict | None) -> str:
    """The model card's / report's line for the delivered model."""
    if not record:
        return "a single model, retrained on every non-test image (the refit)"
    refit = " and the refit" if record["mode"] == "folds+refit" else ""
    n = record["k"] + (record["mode"] == "folds+refit")
    return (f"an ensemble of {n} models: the {record['k']} cross-validation fold models{refit}, their "
            f"predictions averaged with equal weight; temperature, threshold and "
            f"prediction sets fitted on the {CALIBRATED_ON}")


def paired_difference(truth, ensemble, refit, groups, task: str, n_resamples: int = 1000, seed: int = 42) -> dict:
    """The ensemble's headline test metric minus the refit's (balanced accuracy from the predicted labels; a
    regression: MAE, lower is better) on the same rows, with a paired 95% percentile interval: both scored on
    the same resamples, groups (sample id, duplicate group) drawn whole (evaluation/bootstrap.py). A
    classification also gets accuracy's paired difference on those resamples (``accuracy``): the two can
    move apart, an ensemble trading the common classes' hits for the rare ones'."""
    from image_learner.evaluation import bootstrap

    truth, ensemble, refit = np.asarray(truth), np.asarray(ensemble), np.asarray(refit)

    def mean_gap(weights):  # MAE's or accuracy's difference on each resample
        return gap @ weights / weights.sum(axis=0)

    if task == "regression":  # per row: the absolute errors' difference
        gap = np.abs(ensemble.astype(float) - truth.astype(float)) - np.abs(refit.astype(float) - truth.astype(float))
        values = {"mae": mean_gap}
    else:  # per row: the hits' difference
        gap = (ensemble == truth).astype(float) - (refit == truth).astype(float)
        onehot = np.stack([truth == c for c in sorted(set(truth))]).astype(float)  # classes x rows

        def balanced(weights):  # the mean over the classes drawn of each class's recall difference
            drawn = onehot @ weights
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.nanmean(np.where(drawn > 0, (onehot * gap) @ weights / drawn, np.nan), axis=0)

        values = {"balanced_accuracy": balanced, "accuracy": mean_gap}
    samples = {metric: [] for metric in values}
    for weights in bootstrap.resample_weights(len(truth), groups, n_resamples, seed):  # chunks: capped memory
        for metric, value in values.items():
            samples[metric].append(value(weights))
    found = {metric: {"ensemble_minus_refit": float(value(np.ones((len(truth), 1)))[0]),
                      "ci95": [float(v) for v in np.percentile(np.concatenate(samples[metric]), [2.5, 97.5])]}
             for metric, value in values.items()}
    metric = next(iter(values))
    out = {"metric": metric, **found[metric], "resamples": n_resamples, "seed": seed,
           "groups": int(np.max(groups)) + 1 if len(groups) else 0}
    if "accuracy" in found:
        out["accuracy"] = found["accuracy"]
    return out
