"""The model manifest (``model/image_learner.json``): what training writes beside Ludwig's files, and the
checks it passes before anything else of a model ZIP is read (pure; no Ludwig).

The manifest records the task, the classes (or a regression's target scaling), the decision threshold
and every training option that built the Ludwig config, so that model_archive can rebuild the config and
compare it with the saved one field by field. Each field must be exactly what training writes.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict

from image_learner.errors import InputError
from image_learner.training.ludwig_config import (AUGMENTATIONS, LABEL_FEATURE, LR_SCHEDULES, VALIDATION_METRICS, WEIGHTS_RECORD,
                            TrainingOptions)
from image_learner.data import tabular
from image_learner.evaluation import class_decision
from image_learner.evaluation import ood
from image_learner.evaluation import trust
from image_learner.evaluation.tta import MODES as TTA_MODES
from image_learner.evaluation.metrics import THRESHOLD_POLICIES

MANIFEST = "image_learner.json"
METADATA = "training_set_metadata.json"
FORMAT = "image-learner-model"
FORMAT_VERSION = 6  # 2: training options, Ludwig's class order; 3: selection metric, threshold policy, target scaling;
# 4: trust (temperature, conformal quantile); 5: test-time augmentation (training.options.tta);
# 6: the multiclass decision (class_offsets, training.options.class_decision)


def is_int(value, low=None, high=None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def _is_number(value, low=-math.inf, high=math.inf, above=False) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > low if above else value >= low) and value <= high)


_MODEL_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?")  # no "hf-hub:" / paths: timm names only


def _timm_model(name) -> bool:
    """A timm architecture (and pretrained tag) timm knows, as training stores it (aliases resolved)."""
    from image_learner.training import timm_backbone

    if not (isinstance(name, str) and _MODEL_NAME.fullmatch(name)):
        return False
    try:
        return timm_backbone.resolve_model_name(name) == name
    except timm_backbone.BackboneError:
        return False


# The largest image side a model may declare, as training allows (--image-size): predict resizes every
# image to it and the backbone's activations grow with its square (a 1024 px ViT batch is ~21x a 224 px one).
MAX_IMAGE_SIZE = 1024
_STRINGS = (lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v) and len(set(v)) == len(v))
# Every TrainingOptions field, as training writes it: (is valid, what is expected).
OPTION_RULES = {
    "model_name": (_timm_model, "a timm model name"),
    "image_size": (lambda v: is_int(v, 16, MAX_IMAGE_SIZE), f"an integer from 16 to {MAX_IMAGE_SIZE}"),
    "use_pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "fine_tune": (lambda v: isinstance(v, bool), "true or false"),
    "pretrained_weights": (lambda v: v is None or isinstance(v, str) and WEIGHTS_RECORD.fullmatch(v) is not None,
                           "null or '<file name> sha256:<64 hex digits>'"),
    "epochs": (lambda v: is_int(v, 1), "an integer of at least 1"),
    "early_stop": (lambda v: is_int(v, 0), "an integer of at least 0"),
    "batch_size": (lambda v: is_int(v, 1), "an integer of at least 1"),
    "learning_rate": (lambda v: _is_number(v, 0, above=True), "a number above 0"),
    "random_seed": (lambda v: is_int(v), "an integer"),
    "augmentation": (lambda v: _STRINGS(v) and set(v) <= set(AUGMENTATIONS), "a list of Ludwig augmentations"),
    "class_weights": (lambda v: v in ("none", "balanced"), "'none' or 'balanced'"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, " or ".join(map(repr, LR_SCHEDULES))),
    "preprocessing_workers": (lambda v: is_int(v, 1), "an integer of at least 1"),
    "preprocessing_mode": (lambda v: v in ("lazy", "eager"), "'lazy' or 'eager'"),
    # as training resolved them (run_request.resolve_training_options): what the model ran on, not a request
    "device": (lambda v: v in ("cpu", "cuda"), "'cpu' or 'cuda'"),
    "mixed_precision": (lambda v: v in ("on", "off"), "'on' or 'off'"),
    # resolved for the task (run_request.resolve_task_options); _check_training holds it to the task
    "validation_metric": (lambda v: any(v in names for names in VALIDATION_METRICS.values()), "a metric name"),
    "threshold_metric": (lambda v: v in THRESHOLD_POLICIES, " or ".join(map(repr, THRESHOLD_POLICIES))),
    "threshold": (lambda v: v is None or _is_number(v, 0, 1) and 0 < v < 1, "null or a number between 0 and 1"),
    "tta": (lambda v: v in TTA_MODES, " or ".join(map(repr, TTA_MODES))),
    "class_decision": (lambda v: v in class_decision.RULES, " or ".join(map(repr, class_decision.RULES))),
}
MANIFEST_FIELDS = ("format", "format_version", "tool_version", "task", "classes", "positive_label", "threshold",
                   "class_offsets", "image_size", "model_name", "ludwig_version", "label_vocabulary", "target_scaling", "training", "trust")
# written by training since the OOD flag; absent in models made before, which then flag nothing;
# "tabular": only in a model trained with --tabular-columns (its columns, kinds, training statistics)
# "ensemble": only in a model trained with --ensemble folds / folds+refit (model/fold_ensemble.py)
OPTIONAL_FIELDS = ("ood", "tabular", "ensemble")
TRAINING_FIELDS = ("options", "class_weights", "positive_weight", "train_rows")


def write_manifest(model_dir: str, manifest: dict, options: TrainingOptions, class_weights: dict | None,
                   positive_weight: float | None, train_rows: int) -> None:
    """Called by training once Ludwig saved the model: what prediction needs beyond Ludwig's own files,
    and the inputs of ``build_ludwig_config`` so that prediction can rebuild the config and compare."""
    with open(os.path.join(model_dir, METADATA)) as handle:
        label = json.load(handle)[LABEL_FEATURE]
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
              "label_vocabulary": label.get("idx2str"),  # Ludwig's class index order (None: binary)
              "training": {"options": asdict(options), "class_weights": class_weights,
                           "positive_weight": positive_weight, "train_rows": train_rows}}
    with open(os.path.join(model_dir, MANIFEST), "w") as handle:
        json.dump(record, handle, indent=2)


# A regression's target scaling: prediction is z * std + mean on the model's float32 output z (|z| < 3.4e38),
# so with these bounds every predicted value, error and squared error stays a finite float64.
TARGET_LIMIT = 1e100


def target_scaling_ok(scaling) -> bool:
    """{"mean", "std"} as training writes them: finite, |mean| <= TARGET_LIMIT, std in [1/TARGET_LIMIT,
    TARGET_LIMIT] (training also refuses targets beyond, model_fit.target_scaling)."""
    return (isinstance(scaling, dict) and set(scaling) == {"mean", "std"}
            and _is_number(scaling.get("mean"), -TARGET_LIMIT, TARGET_LIMIT)
            and _is_number(scaling.get("std"), 1 / TARGET_LIMIT, TARGET_LIMIT))


def check_manifest(manifest, tool_version: str, ludwig_version: str) -> None:
    """Every field but the optional ``ensemble`` record, which model_archive checks next (fold_ensemble imports
    this module's helpers, so this module does not import it)."""
    expect(isinstance(manifest, dict), MANIFEST, "the file", manifest, "an object")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{MANIFEST}: format {manifest.get('format')!r} format_version "
                         f"{manifest.get('format_version')!r}; this tool reads {FORMAT!r} format_version "
                         f"{FORMAT_VERSION}: retrain the model with this version")
    _same_fields({k: v for k, v in manifest.items() if k not in OPTIONAL_FIELDS}, MANIFEST_FIELDS, MANIFEST, "")
    for field, running, what in (("tool_version", tool_version, "this Image Learner"),
                                 ("ludwig_version", ludwig_version, "the Ludwig this tool runs")):
        expect(manifest[field] == running, MANIFEST, field, manifest[field],
               f"{running!r} ({what}): retrain the model or use the matching tool version")
    task, classes, binary = manifest["task"], manifest["classes"], manifest["task"] == "binary"
    expect(task in ("multiclass", "binary", "regression"), MANIFEST, "task", task,
           "'multiclass', 'binary' or 'regression'")
    ood.check_record(manifest.get("ood"), task, len(classes) if isinstance(classes, list) else 0, MANIFEST)
    if "tabular" in manifest:  # the saved config must then have exactly these features (model_archive)
        wrong = tabular.check_records(manifest["tabular"])
        expect(wrong is None, MANIFEST, "tabular", manifest["tabular"], wrong)
    vocabulary, scaling = manifest["label_vocabulary"], manifest["target_scaling"]
    if task == "regression":
        for field, value in (("classes", []), ("positive_label", None), ("threshold", None),
                             ("class_offsets", None), ("label_vocabulary", None)):
            expect(manifest[field] == value and type(manifest[field]) is type(value), MANIFEST, field,
                   manifest[field], f"{value!r} for a regression model".replace("None", "null"))
        expect(target_scaling_ok(scaling), MANIFEST, "target_scaling", scaling,
               f"the training target's mean and std (|mean| up to {TARGET_LIMIT:g}, std from "
               f"{1 / TARGET_LIMIT:g} to {TARGET_LIMIT:g})")
        _check_training(manifest, binary)
        return
    expect(scaling is None, MANIFEST, "target_scaling", scaling, "null for a classification model")
    expect(_STRINGS(classes) and (len(classes) == 2 if binary else len(classes) >= 3 and classes == sorted(classes)),
           MANIFEST, "classes", classes, "2 class names" if binary else "3 or more class names in sorted order")
    if binary:
        expect(manifest["positive_label"] == classes[1], MANIFEST, "positive_label", manifest["positive_label"],
               f"{classes[1]!r} (the second class)")
        expect(_is_number(manifest["threshold"], 0, 1), MANIFEST, "threshold", manifest["threshold"],
               "a number from 0 to 1")
        expect(vocabulary is None, MANIFEST, "label_vocabulary", vocabulary, "null for a binary model")
        expect(manifest["class_offsets"] is None, MANIFEST, "class_offsets", manifest["class_offsets"],
               "null for a binary model")
    else:
        for field in ("positive_label", "threshold"):
            expect(manifest[field] is None, MANIFEST, field, manifest[field], "null for a multiclass model")
        expect(_STRINGS(vocabulary) and len(vocabulary) >= 2 and set(vocabulary) <= set(classes), MANIFEST,
               "label_vocabulary", vocabulary, "names from classes, in Ludwig's order")
    _check_training(manifest, binary)


def _check_trust(manifest: dict) -> None:
    """The temperature and conformal quantile prediction applies (trust.check_record), once the task is known good."""
    wrong = trust.check_record(manifest["trust"], manifest["task"], len(manifest["classes"]), TARGET_LIMIT)
    expect(wrong is None, MANIFEST, "trust", manifest["trust"], wrong)


def _check_training(manifest: dict, binary: bool) -> None:
    _check_trust(manifest)
    training = manifest["training"]
    expect(isinstance(training, dict), MANIFEST, "training", training, "an object")
    _same_fields(training, TRAINING_FIELDS, MANIFEST, "training.")
    options = training["options"]
    expect(isinstance(options, dict), MANIFEST, "training.options", options, "an object")
    _same_fields(options, tuple(OPTION_RULES), MANIFEST, "training.options.")
    for name, (valid, wanted) in OPTION_RULES.items():
        expect(valid(options[name]), MANIFEST, f"training.options.{name}", options[name], wanted)
    for name in ("image_size", "model_name"):
        expect(manifest[name] == options[name], MANIFEST, name, manifest[name],
               f"training.options.{name} ({options[name]!r})")
    metric, task = options["validation_metric"], manifest["task"]
    expect(metric in VALIDATION_METRICS.get(task, {}), MANIFEST, "training.options.validation_metric", metric,
           f"one of {', '.join(VALIDATION_METRICS.get(task, {}))} for a {task} task")
    if options["threshold"] is not None:  # the fixed threshold is the one prediction applies
        expect(manifest["threshold"] == options["threshold"], MANIFEST, "threshold", manifest["threshold"],
               f"training.options.threshold ({options['threshold']!r})")
    balanced = options["class_weights"] == "balanced"
    if manifest["task"] == "regression":
        expect(not balanced, MANIFEST, "training.options.class_weights", options["class_weights"],
               "'none' for a regression model")
    weights, positive = training["class_weights"], training["positive_weight"]
    if balanced and not binary:
        # one per class, and so per name of Ludwig's vocabulary: Ludwig refuses other keys at training
        names = set(manifest["classes"])
        expect(isinstance(weights, dict) and set(weights) == names == set(manifest["label_vocabulary"])
               and all(_is_number(w, 0, above=True) for w in weights.values()), MANIFEST,
               "training.class_weights", weights, "a weight above 0 per class")
    else:
        expect(weights is None, MANIFEST, "training.class_weights", weights, "null")
    if balanced and binary:
        expect(_is_number(positive, 0, above=True), MANIFEST, "training.positive_weight", positive, "a number above 0")
    else:
        expect(positive is None, MANIFEST, "training.positive_weight", positive, "null")
    expect(is_int(training["train_rows"], 1), MANIFEST, "training.train_rows", training["train_rows"],
           "an integer of at least 1")
    _check_decision(manifest, options["class_decision"])


def _check_decision(manifest: dict, rule: str) -> None:
    """The offsets predict subtracts (class_decision.decide): a balanced multiclass model's, else none."""
    offsets = manifest["class_offsets"]
    if manifest["task"] != "multiclass":
        expect(rule == class_decision.DEFAULT_RULE, MANIFEST, "training.options.class_decision", rule,
               f"{class_decision.DEFAULT_RULE!r} for a {manifest['task']} model")
    elif rule == "balanced":
        expect(class_decision.check_offsets(offsets, len(manifest["classes"])), MANIFEST, "class_offsets", offsets,
               f"one number per class, each within ±{class_decision.OFFSET_LIMIT:g} (the balanced decision)")
    else:
        expect(offsets is None, MANIFEST, "class_offsets", offsets,
               f"null (training.options.class_decision is {rule!r})")


def expect(ok: bool, file: str, path: str, value, wanted: str) -> None:
    if not ok:
        raise InputError(f"{file}: {path} is {short(value)}, expected {wanted}")


def _same_fields(record: dict, expected: tuple, file: str, prefix: str) -> None:
    missing = [f for f in expected if f not in record]
    if missing:
        raise InputError(f"{file}: {prefix}{missing[0]} is missing")
    extra = sorted(set(record) - set(expected))
    if extra:
        raise InputError(f"{file}: {prefix}{extra[0]} is not a field Image Learner writes")


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
