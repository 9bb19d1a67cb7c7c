"""Trained-model archives: the checks a model ZIP passes before prediction (its manifest: model_manifest).

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
import os
from contextlib import contextmanager

from image_learner.data.input_utils import InputError, ZipLimits, extract_zip_safely
from image_learner.training.ludwig_config import IMAGE_FEATURE, LABEL_FEATURE, TrainingOptions, build_ludwig_config
from image_learner.model.model_manifest import MANIFEST, METADATA, check_manifest, expect, is_int, short

CONFIG = "model_hyperparameters.json"
WEIGHTS = "model_weights.safetensors"
MODEL_FILES = {CONFIG, WEIGHTS, METADATA, MANIFEST}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Config keys that make Ludwig load code or remote resources (LLM models, adapters, quantised hub
# weights): refused wherever they appear with a value, before any other check.
CODE_LOADING_KEYS = {"trust_remote_code", "base_model", "adapter", "adapters", "quantization",
                     "model_parameters", "generation", "prompt"}
WEIGHT_PREFIXES = (f"input_features.module_dict.{IMAGE_FEATURE}__ludwig.encoder_obj.",
                   f"output_features.module_dict.{LABEL_FEATURE}__ludwig.")
DECODER_WEIGHT = f"output_features.module_dict.{LABEL_FEATURE}__ludwig.decoder_obj.dense.dense.weight"


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


def expected_config(manifest: dict) -> dict:
    """The config our builder makes from the manifest's training options (not yet rendered by Ludwig), with
    the class weights as Ludwig saves them (``saved_class_weights``)."""
    training = manifest["training"]
    options = TrainingOptions(**training["options"])
    config = build_ludwig_config(options, manifest["task"], training["class_weights"], training["positive_weight"],
                                 training["train_rows"])
    loss = config["output_features"][0].get("loss", {})
    if isinstance(loss.get("class_weights"), dict):
        loss["class_weights"] = saved_class_weights(loss["class_weights"], manifest["label_vocabulary"])
    return config


def saved_class_weights(weights: dict[str, float], vocabulary: list[str]) -> list[float]:
    """Ludwig turns the class-weight object we configure into a list in its vocabulary's order (``idx2str``,
    the manifest's label_vocabulary, which check_metadata holds to training_set_metadata.json) and saves
    that list: the saved config is compared with this, value by value. The manifest check made sure the
    object has one weight per vocabulary name."""
    return [weights[name] for name in vocabulary]


def check_config(config, manifest: dict, render=None) -> None:
    """model_hyperparameters.json against the rebuilt config, code-loading keys first."""
    expect(isinstance(config, dict), CONFIG, "the file", config, "an object")
    _refuse_code_loading(config, "")
    for field, wanted in (("model_type", "ecd"), ("backend", {"type": "local"})):
        expect(config.get(field) == wanted, CONFIG, field, config.get(field), repr(wanted))
    expected = expected_config(manifest)
    _accept_earlier_prefetch(config, expected)  # before rendering: Ludwig hashes preprocessing into proc_column
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
        expect(valid(value), CONFIG, "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)[1:],
               value, wanted)


_PREFETCH = ("input_features", 0, "preprocessing", "prefetch_size")


def _accept_earlier_prefetch(config: dict, expected: dict) -> None:
    """Models trained with augmentations before the same-seed fix (ludwig_config.py) saved prefetch_size
    null where the builder now writes 0: accepted, as it only steered how training batches were loaded,
    never the model or what it predicts."""
    features = config.get("input_features")
    pre = features[0].get("preprocessing") if isinstance(features, list) and features and isinstance(
        features[0], dict) else None
    wanted = _at(expected, _PREFETCH[:-1])
    if isinstance(pre, dict) and _PREFETCH[-1] in pre and pre[_PREFETCH[-1]] is None and wanted.get(
            _PREFETCH[-1]) == 0:
        del wanted[_PREFETCH[-1]]  # as the builder made it then: Ludwig renders the missing field as null


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
             ("trainer", "gradient_accumulation_steps"): (lambda v: is_int(v, 1, 1), "1"),
             ("output_features", 0, "input_size"): (lambda v: is_int(v, 1), "a positive integer"),
             ("output_features", 0, "decoder", "input_size"): (lambda v: v == width, f"{width!r} (its input_size)")}
    if manifest["task"] == "multiclass":
        n = len(manifest["label_vocabulary"])
        for path in (("output_features", 0, "num_classes"), ("output_features", 0, "decoder", "num_classes")):
            fills[path] = (lambda v: is_int(v, n, n), f"{n} (the classes)")
    return fills


def _refuse_code_loading(value, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in CODE_LOADING_KEYS and _has_value(item):
                raise InputError(f"{CONFIG}: {where} is set ({short(item)}); an Image Learner model never "
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
    expect(isinstance(metadata, dict), METADATA, "the file", metadata, "an object")
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
    expect(isinstance(checksum, str), METADATA, "checksum", checksum, "a string")
    expected = {"checksum": checksum, IMAGE_FEATURE: image, LABEL_FEATURE: label}
    _compare(metadata, expected, METADATA, "", exact=exact)
    if vocabulary is not None:  # str2freq: counts in the training table, by which Ludwig sorted the vocabulary
        # Ludwig writes the file with sorted keys, so the counts are compared in idx2str order, not file order.
        saved = metadata[LABEL_FEATURE]["str2freq"]
        counts = [saved.get(c) for c in vocabulary]
        expect(set(saved) == set(vocabulary) and all(is_int(n, 1) for n in counts)
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
            raise InputError(f"{file}: {where} is {short(saved)}, expected an object")
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
            count = f"{len(saved)} entries" if isinstance(saved, list) else short(saved)
            raise InputError(f"{file}: {where} has {count}, expected {len(expected)}")
        for k, (item, value) in enumerate(zip(saved, expected)):
            _compare(item, value, file, f"{path}[{k}]", exact)
    elif saved != expected or type(saved) is not type(expected):
        raise InputError(f"{file}: {where} is {short(saved)}, expected {short(expected)}")


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


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
