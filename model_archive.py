"""Trained-model archives: the manifest training writes, and the checks a model ZIP passes before prediction.

A model file is active input: Ludwig builds whatever model_hyperparameters.json describes, and an LLM
config with ``trust_remote_code`` imports Python from any folder it names. So nothing in the ZIP is
trusted: the manifest records the options that built the config, the config is rebuilt from them with
our own builder and Ludwig's schema rendering, and the saved files must equal what training writes,
field by field, except the few values Ludwig fills in while training, which are checked against each
other and the weights' header. Only then is anything loaded (``ludwig_trainer.load_model``, hub
offline). The checks (the pure core, ``validate_model_dir``) need no Ludwig: the rendering
(``ludwig_trainer.rendered_config``) is passed in.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import asdict

from input_utils import InputError, ZipLimits, extract_zip_safely
from ludwig_config import (AUGMENTATIONS, IMAGE_FEATURE, LABEL_FEATURE, LR_SCHEDULES, VALIDATION_METRICS,
                           TrainingOptions, build_ludwig_config)
from metrics import THRESHOLD_POLICIES

MANIFEST = "image_learner.json"
CONFIG = "model_hyperparameters.json"
METADATA = "training_set_metadata.json"
WEIGHTS = "model_weights.safetensors"
FORMAT = "image-learner-model"
FORMAT_VERSION = 3  # 2: training options, Ludwig's class order; 3: selection metric, threshold policy, target scaling
MODEL_FILES = {CONFIG, WEIGHTS, METADATA, MANIFEST}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Config keys that make Ludwig load code or remote resources (LLM models, adapters, quantised hub
# weights): refused wherever they appear with a value, before any other check.
CODE_LOADING_KEYS = {"trust_remote_code", "base_model", "adapter", "adapters", "quantization",
                     "model_parameters", "generation", "prompt"}
WEIGHT_PREFIXES = (f"input_features.module_dict.{IMAGE_FEATURE}__ludwig.encoder_obj.",
                   f"output_features.module_dict.{LABEL_FEATURE}__ludwig.")
DECODER_WEIGHT = f"output_features.module_dict.{LABEL_FEATURE}__ludwig.decoder_obj.dense.dense.weight"


def _is_int(value, low=None, high=None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def _is_number(value, low=-math.inf, high=math.inf, above=False) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > low if above else value >= low) and value <= high)


_MODEL_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?")  # no "hf-hub:" / paths: timm names only


def _timm_model(name) -> bool:
    """A timm architecture (and pretrained tag) timm knows, as training stores it (aliases resolved)."""
    import timm_backbone

    if not (isinstance(name, str) and _MODEL_NAME.fullmatch(name)):
        return False
    try:
        return timm_backbone.resolve_model_name(name) == name
    except timm_backbone.BackboneError:
        return False


_STRINGS = (lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v) and len(set(v)) == len(v))
# Every TrainingOptions field, as training writes it: (is valid, what is expected).
OPTION_RULES = {
    "model_name": (_timm_model, "a timm model name"),
    "image_size": (lambda v: _is_int(v, 16, 1024), "an integer from 16 to 1024"),
    "use_pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "fine_tune": (lambda v: isinstance(v, bool), "true or false"),
    "pretrained_weights": (lambda v: v is None or isinstance(v, str), "a file name or null"),
    "epochs": (lambda v: _is_int(v, 1), "an integer of at least 1"),
    "early_stop": (lambda v: _is_int(v, 0), "an integer of at least 0"),
    "batch_size": (lambda v: _is_int(v, 1), "an integer of at least 1"),
    "learning_rate": (lambda v: _is_number(v, 0, above=True), "a number above 0"),
    "random_seed": (lambda v: _is_int(v), "an integer"),
    "augmentation": (lambda v: _STRINGS(v) and set(v) <= set(AUGMENTATIONS), "a list of Ludwig augmentations"),
    "class_weights": (lambda v: v in ("none", "balanced"), "'none' or 'balanced'"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, " or ".join(map(repr, LR_SCHEDULES))),
    "preprocessing_workers": (lambda v: _is_int(v, 1), "an integer of at least 1"),
    "preprocessing_mode": (lambda v: v in ("lazy", "eager"), "'lazy' or 'eager'"),
    # as training resolved them (pipeline.resolve_training_options): what the model ran on, not a request
    "device": (lambda v: v in ("cpu", "cuda"), "'cpu' or 'cuda'"),
    "mixed_precision": (lambda v: v in ("on", "off"), "'on' or 'off'"),
    # resolved for the task (pipeline.resolve_task_options); _check_training holds it to the task
    "validation_metric": (lambda v: any(v in names for names in VALIDATION_METRICS.values()), "a metric name"),
    "threshold_metric": (lambda v: v in THRESHOLD_POLICIES, " or ".join(map(repr, THRESHOLD_POLICIES))),
    "threshold": (lambda v: v is None or _is_number(v, 0, 1) and 0 < v < 1, "null or a number between 0 and 1"),
}
MANIFEST_FIELDS = ("format", "format_version", "tool_version", "task", "classes", "positive_label", "threshold",
                   "image_size", "model_name", "ludwig_version", "label_vocabulary", "target_scaling", "training")
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


def unpack_model(model_zip: str, dest: str, limits: ZipLimits, tool_version: str, render) -> tuple[str, dict]:
    """Extract and validate a trained_model.zip; returns (model_dir, manifest). ``render``: Ludwig's
    schema rendering of a config (``ludwig_trainer.rendered_config``)."""
    from importlib.metadata import version

    name = os.path.basename(model_zip)
    try:
        members = extract_zip_safely(model_zip, dest, limits)
        unexpected = sorted(m for m in members if not (m.startswith("model/") and m[len("model/"):] in MODEL_FILES))
        if unexpected:
            raise InputError(f"it holds files an Image Learner model never has ({', '.join(unexpected[:5])}); "
                             "refusing to load it")
        missing = sorted(MODEL_FILES - {m[len("model/"):] for m in members})
        if missing:
            raise InputError(f"it is not an Image Learner model ZIP (missing {', '.join(missing)})")
        model_dir = os.path.join(dest, "model")
        with offline_hub():  # the first import of timm / Ludwig (and the hub) may happen here
            manifest = validate_model_dir(model_dir, tool_version, version("ludwig"), render)
    except RecursionError as err:
        raise InputError(f"model {name!r}: a JSON file is nested too deeply") from err
    except InputError as err:
        raise InputError(f"model {name!r}: {err}") from err
    return model_dir, manifest


def validate_model_dir(model_dir: str, tool_version: str, ludwig_version: str, render=None) -> dict:
    """The pure core: raise InputError naming the file and field unless the four files are exactly what
    this tool's training writes. Without ``render`` the saved config need only contain the config our
    builder makes (a weaker check, for tests without Ludwig); with it, it must equal the rendering."""
    manifest = _read_json(model_dir, MANIFEST)
    check_manifest(manifest, tool_version, ludwig_version)
    config = _read_json(model_dir, CONFIG)
    check_config(config, manifest, render)
    check_metadata(_read_json(model_dir, METADATA), config, manifest, exact=render is not None)
    check_weights(os.path.join(model_dir, WEIGHTS), config, manifest)
    return manifest


def _read_json(model_dir: str, name: str):
    try:
        with open(os.path.join(model_dir, name), encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"{name} is not valid JSON ({type(err).__name__}: {err})") from err


def check_manifest(manifest, tool_version: str, ludwig_version: str) -> None:
    _expect(isinstance(manifest, dict), MANIFEST, "the file", manifest, "an object")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{MANIFEST}: format {manifest.get('format')!r} format_version "
                         f"{manifest.get('format_version')!r}; this tool reads {FORMAT!r} format_version "
                         f"{FORMAT_VERSION}: retrain the model with this version")
    _same_fields(manifest, MANIFEST_FIELDS, MANIFEST, "")
    for field, running, what in (("tool_version", tool_version, "this Image Learner"),
                                 ("ludwig_version", ludwig_version, "the Ludwig this tool runs")):
        _expect(manifest[field] == running, MANIFEST, field, manifest[field],
                f"{running!r} ({what}): retrain the model or use the matching tool version")
    task, classes, binary = manifest["task"], manifest["classes"], manifest["task"] == "binary"
    _expect(task in ("multiclass", "binary", "regression"), MANIFEST, "task", task,
            "'multiclass', 'binary' or 'regression'")
    vocabulary, scaling = manifest["label_vocabulary"], manifest["target_scaling"]
    if task == "regression":
        for field, value in (("classes", []), ("positive_label", None), ("threshold", None),
                             ("label_vocabulary", None)):
            _expect(manifest[field] == value and type(manifest[field]) is type(value), MANIFEST, field,
                    manifest[field], f"{value!r} for a regression model".replace("None", "null"))
        _expect(isinstance(scaling, dict) and set(scaling) == {"mean", "std"} and _is_number(scaling.get("mean"))
                and _is_number(scaling.get("std"), 0, above=True), MANIFEST, "target_scaling", scaling,
                "the training target's mean and std (std above 0)")
        _check_training(manifest, binary)
        return
    _expect(scaling is None, MANIFEST, "target_scaling", scaling, "null for a classification model")
    _expect(_STRINGS(classes) and (len(classes) == 2 if binary else len(classes) >= 3 and classes == sorted(classes)),
            MANIFEST, "classes", classes, "2 class names" if binary else "3 or more class names in sorted order")
    if binary:
        _expect(manifest["positive_label"] == classes[1], MANIFEST, "positive_label", manifest["positive_label"],
                f"{classes[1]!r} (the second class)")
        _expect(_is_number(manifest["threshold"], 0, 1), MANIFEST, "threshold", manifest["threshold"],
                "a number from 0 to 1")
        _expect(vocabulary is None, MANIFEST, "label_vocabulary", vocabulary, "null for a binary model")
    else:
        for field in ("positive_label", "threshold"):
            _expect(manifest[field] is None, MANIFEST, field, manifest[field], "null for a multiclass model")
        _expect(_STRINGS(vocabulary) and len(vocabulary) >= 2 and set(vocabulary) <= set(classes), MANIFEST,
                "label_vocabulary", vocabulary, "names from classes, in Ludwig's order")
    _check_training(manifest, binary)


def _check_training(manifest: dict, binary: bool) -> None:
    training = manifest["training"]
    _expect(isinstance(training, dict), MANIFEST, "training", training, "an object")
    _same_fields(training, TRAINING_FIELDS, MANIFEST, "training.")
    options = training["options"]
    _expect(isinstance(options, dict), MANIFEST, "training.options", options, "an object")
    _same_fields(options, tuple(OPTION_RULES), MANIFEST, "training.options.")
    for name, (valid, wanted) in OPTION_RULES.items():
        _expect(valid(options[name]), MANIFEST, f"training.options.{name}", options[name], wanted)
    for name in ("image_size", "model_name"):
        _expect(manifest[name] == options[name], MANIFEST, name, manifest[name],
                f"training.options.{name} ({options[name]!r})")
    metric, task = options["validation_metric"], manifest["task"]
    _expect(metric in VALIDATION_METRICS.get(task, {}), MANIFEST, "training.options.validation_metric", metric,
            f"one of {', '.join(VALIDATION_METRICS.get(task, {}))} for a {task} task")
    if options["threshold"] is not None:  # the fixed threshold is the one prediction applies
        _expect(manifest["threshold"] == options["threshold"], MANIFEST, "threshold", manifest["threshold"],
                f"training.options.threshold ({options['threshold']!r})")
    balanced = options["class_weights"] == "balanced"
    if manifest["task"] == "regression":
        _expect(not balanced, MANIFEST, "training.options.class_weights", options["class_weights"],
                "'none' for a regression model")
    weights, positive = training["class_weights"], training["positive_weight"]
    if balanced and not binary:
        _expect(isinstance(weights, dict) and set(weights) == set(manifest["classes"])
                and all(_is_number(w, 0, above=True) for w in weights.values()), MANIFEST,
                "training.class_weights", weights, "a weight above 0 per class")
    else:
        _expect(weights is None, MANIFEST, "training.class_weights", weights, "null")
    if balanced and binary:
        _expect(_is_number(positive, 0, above=True), MANIFEST, "training.positive_weight", positive, "a number above 0")
    else:
        _expect(positive is None, MANIFEST, "training.positive_weight", positive, "null")
    _expect(_is_int(training["train_rows"], 1), MANIFEST, "training.train_rows", training["train_rows"],
            "an integer of at least 1")


def _expect(ok: bool, file: str, path: str, value, wanted: str) -> None:
    if not ok:
        raise InputError(f"{file}: {path} is {_short(value)}, expected {wanted}")


def _same_fields(record: dict, expected: tuple, file: str, prefix: str) -> None:
    missing = [f for f in expected if f not in record]
    if missing:
        raise InputError(f"{file}: {prefix}{missing[0]} is missing")
    extra = sorted(set(record) - set(expected))
    if extra:
        raise InputError(f"{file}: {prefix}{extra[0]} is not a field Image Learner writes")


def expected_config(manifest: dict) -> dict:
    """The config our builder makes from the manifest's training options (not yet rendered by Ludwig)."""
    training = manifest["training"]
    options = TrainingOptions(**training["options"])
    return build_ludwig_config(options, manifest["task"], training["class_weights"], training["positive_weight"],
                               training["train_rows"])


def check_config(config, manifest: dict, render=None) -> None:
    """model_hyperparameters.json against the rebuilt config, code-loading keys first."""
    _expect(isinstance(config, dict), CONFIG, "the file", config, "an object")
    _refuse_code_loading(config, "")
    for field, wanted in (("model_type", "ecd"), ("backend", {"type": "local"})):
        _expect(config.get(field) == wanted, CONFIG, field, config.get(field), repr(wanted))
    expected = expected_config(manifest)
    if render is None:
        _compare(config, expected, CONFIG, "", exact=False)
        return
    expected = render(expected)
    fills = _training_fills(config, manifest)
    for path in fills:
        _at(expected, path[:-1])[path[-1]] = _FILLED
    _compare(config, expected, CONFIG, "", exact=True)
    for path, (valid, wanted) in fills.items():
        value = _at(config, path)
        _expect(valid(value), CONFIG, "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)[1:],
                value, wanted)


_FILLED = object()  # in an expected config: a value Ludwig fills in while training, checked on its own


def _at(document, path):
    for key in path:
        document = document[key]
    return document


def _training_fills(config: dict, manifest: dict) -> dict:
    """The values Ludwig fills in while training: the flag that the backbone's weights are in the
    checkpoint, the batch rendering (an explicit batch size gives 1 accumulation step), the class
    count and the head's input width (checked against the weights' shape too)."""
    outputs = config.get("output_features")
    first = outputs[0] if isinstance(outputs, list) and outputs else None
    width = first.get("input_size") if isinstance(first, dict) else None
    fills = {("input_features", 0, "encoder", "saved_weights_in_checkpoint"): (lambda v: v is True, "true"),
             ("trainer", "gradient_accumulation_steps"): (lambda v: _is_int(v, 1, 1), "1"),
             ("output_features", 0, "input_size"): (lambda v: _is_int(v, 1), "a positive integer"),
             ("output_features", 0, "decoder", "input_size"): (lambda v: v == width, f"{width!r} (its input_size)")}
    if manifest["task"] == "multiclass":
        n = len(manifest["label_vocabulary"])
        for path in (("output_features", 0, "num_classes"), ("output_features", 0, "decoder", "num_classes")):
            fills[path] = (lambda v: _is_int(v, n, n), f"{n} (the classes)")
    return fills


def _refuse_code_loading(value, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in CODE_LOADING_KEYS and _has_value(item):
                raise InputError(f"{CONFIG}: {where} is set ({_short(item)}); an Image Learner model never "
                                 "loads code or remote resources")
            _refuse_code_loading(item, where)
    elif isinstance(value, list):
        for k, item in enumerate(value):
            _refuse_code_loading(item, f"{path}[{k}]")


def _has_value(value) -> bool:
    """Anything but null, false, 0, "" or containers of only those (Ludwig's rendered defaults)."""
    if isinstance(value, dict):
        return any(_has_value(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_value(v) for v in value)
    return bool(value)


def check_metadata(metadata, config: dict, manifest: dict, exact: bool = True) -> None:
    """training_set_metadata.json: what Ludwig derives from the (already validated) config, and the
    label vocabulary in the order Ludwig numbered the output units, which must be the manifest's."""
    _expect(isinstance(metadata, dict), METADATA, "the file", metadata, "an object")
    side = manifest["image_size"]
    pre = config["input_features"][0]["preprocessing"]
    image = {"preprocessing": {**pre, "num_classes": 0, "channel_class_map": []}}
    if pre.get("mode", "lazy") == "eager":
        image["reshape"] = [3, side, side]
    else:
        image.update(lazy=True, mode=pre.get("mode", "lazy"), prefetch_size=pre.get("prefetch_size"), reshape=None,
                     lazy_image_params={"img_width": side, "img_height": side, "should_resize": True,
                                        "num_channels": 3, "resize_method": pre.get("resize_method"),
                                        "user_specified_num_channels": True,
                                        "standardize_image": pre.get("standardize_image"),
                                        "channel_class_map": [], "default_image_shape": [3, side, side]})
    label = {"preprocessing": config["output_features"][0]["preprocessing"]}
    vocabulary = manifest["label_vocabulary"]
    if vocabulary is not None:
        saved = metadata.get(LABEL_FEATURE)
        counts = saved.get("str2freq") if isinstance(saved, dict) else None
        label.update(idx2str=vocabulary, str2idx={c: k for k, c in enumerate(vocabulary)},
                     vocab_size=len(vocabulary), str2freq=counts if isinstance(counts, dict) else {})
    checksum = metadata.get("checksum")
    _expect(isinstance(checksum, str), METADATA, "checksum", checksum, "a string")
    expected = {"checksum": checksum, IMAGE_FEATURE: image, LABEL_FEATURE: label}
    _compare(metadata, expected, METADATA, "", exact=exact)
    if vocabulary is not None:  # str2freq: counts in the training table, by which Ludwig sorted the vocabulary
        # Ludwig writes the file with sorted keys, so the counts are compared in idx2str order, not file order.
        saved = metadata[LABEL_FEATURE]["str2freq"]
        counts = [saved.get(c) for c in vocabulary]
        _expect(set(saved) == set(vocabulary) and all(_is_int(n, 1) for n in counts)
                and counts == sorted(counts, reverse=True), METADATA, f"{LABEL_FEATURE}.str2freq", saved,
                "a count of at least 1 per class, decreasing in idx2str order")


def check_weights(path: str, config: dict, manifest: dict) -> None:
    """The safetensors header (read by safetensors itself: nothing is unpickled) holds only this model's
    tensors, and the classifier's shape matches the config. Ludwig's strict load checks every other name
    and shape against the model built from the validated config."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as handle:
            shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{WEIGHTS} is not a valid safetensors file ({err})") from err
    foreign = sorted(name for name in shapes if not name.startswith(WEIGHT_PREFIXES))
    if foreign:
        raise InputError(f"{WEIGHTS} holds tensors of no Image Learner model ({', '.join(foreign[:3])})")
    outputs = len(manifest["label_vocabulary"]) if manifest["task"] == "multiclass" else 1
    wanted = [outputs, config["output_features"][0].get("input_size")]
    if shapes.get(DECODER_WEIGHT) != wanted:
        raise InputError(f"{WEIGHTS}: {DECODER_WEIGHT} has shape {shapes.get(DECODER_WEIGHT)}, expected {wanted}")


def _compare(saved, expected, file: str, path: str, exact: bool) -> None:
    """First difference, as ``file: path is X, expected Y``; without ``exact`` extra dict keys pass."""
    where = path or "the file"
    if expected is _FILLED:
        return
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            raise InputError(f"{file}: {where} is {_short(saved)}, expected an object")
        missing = [k for k in expected if k not in saved]
        if missing:
            raise InputError(f"{file}: {_join(path, missing[0])} is missing")
        extra = sorted(set(saved) - set(expected))
        if exact and extra:
            raise InputError(f"{file}: {_join(path, extra[0])} is not a field Image Learner writes")
        for key, value in expected.items():
            _compare(saved[key], value, file, _join(path, key), exact)
    elif isinstance(expected, list):
        if not isinstance(saved, list) or len(saved) != len(expected):
            count = f"{len(saved)} entries" if isinstance(saved, list) else _short(saved)
            raise InputError(f"{file}: {where} has {count}, expected {len(expected)}")
        for k, (item, value) in enumerate(zip(saved, expected)):
            _compare(item, value, file, f"{path}[{k}]", exact)
    elif saved != expected or type(saved) is not type(expected):
        raise InputError(f"{file}: {where} is {_short(saved)}, expected {_short(expected)}")


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@contextmanager
def offline_hub():
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 while a model is validated, loaded and used, restored
    afterwards. huggingface_hub reads them when first imported: in a predict run that import happens
    inside (validation imports timm and Ludwig), so the hub stays offline for the whole run."""
    previous = {name: os.environ.get(name) for name in OFFLINE_ENV}
    os.environ.update({name: "1" for name in OFFLINE_ENV})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
