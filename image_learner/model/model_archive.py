"""Trained-model archives: the checks a model ZIP passes before prediction (its manifest: model_manifest).

A model file is active input: Ludwig builds whatever model_hyperparameters.json describes, and an LLM
config with ``trust_remote_code`` imports Python from any folder it names. So nothing in the ZIP is
trusted: the manifest records the options that built the config, the config is rebuilt from them with
our own builder, and the saved files must hold what training writes, field by field, including the
settings that shape the network (NETWORK_FIELDS) and the few values Ludwig fills in while training, which
are checked against each other and the weights' header. Predict runs the network without Ludwig
(model/inference_network.py, built from the manifest), so it compares the config as JSON, without Ludwig's
schema; ``validate_json_files`` takes Ludwig's rendering (``ludwig_trainer.rendered_config``) for an exact
comparison where Ludwig is loaded anyway. The weights are checked against the network built on the meta
device (model_weights.py). The model ZIP has its own size limits (MODEL_LIMITS), not the image ZIP's.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import replace

from image_learner.data import tabular
from image_learner.model import fold_ensemble, model_weights
from image_learner.data.input_utils import InputError, ZipLimits, extract_zip_safely, zip_member_sizes
from image_learner.training.ludwig_config import IMAGE_FEATURE, LABEL_FEATURE, TrainingOptions, build_ludwig_config
from image_learner.model.model_card import CARD
from image_learner.model.model_manifest import MANIFEST, METADATA, check_manifest, expect, is_int, short
from image_learner.model.model_weights import WEIGHTS

CONFIG = "model_hyperparameters.json"
ONNX_FILE = "model.onnx"  # --export-onnx (onnx_export writes it)
JSON_FILES = (MANIFEST, CONFIG, METADATA)  # read in this order: each check needs the ones before
MODEL_FILES = {*JSON_FILES, WEIGHTS}
# Files training may add, never read by prediction: the card (text) and --export-onnx's model.onnx. Capped
# in bytes (checked on the archive's claim; the card also while it is written), so that an allowed name
# cannot carry an archive's worth of data. The ONNX file is never extracted.
OPTIONAL_FILES = {CARD: 1 << 20, ONNX_FILE: 2 << 30}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# A model ZIP's own limits, whatever the image options allow. Each JSON file is parsed whole, so its
# size is checked from the archive's claim before anything is written and again while it is written:
# genuine ones are ~1-30 KB (the metadata grows ~100 bytes per class), 4 MiB parses in well under a second.
MAX_JSON_BYTES = 4 * 1024**2
# --ensemble folds: up to fold_ensemble.MAX_FOLDS more weights files, each held to its network's size on its own
FOLD_WEIGHTS_BYTES = fold_ensemble.MAX_FOLDS * (4 * model_weights.MAX_PARAMETERS + 8 + model_weights.MAX_HEADER_BYTES)
MODEL_LIMITS = ZipLimits(
    # the four files, the card, model.onnx, the fold weights, with some room for the folder entries ZIP tools add
    max_members=16 + fold_ensemble.MAX_FOLDS,
    # everything: the JSON files and the largest weights file this tool loads (model_weights.MAX_PARAMETERS
    # float32 values and a header); the weights file is held to its architecture's size on its own
    # (+ the card and model.onnx at their caps, OPTIONAL_FILES)
    max_total_bytes=3 * MAX_JSON_BYTES + 4 * model_weights.MAX_PARAMETERS + 8 + model_weights.MAX_HEADER_BYTES
    + (1 << 20) + (2 << 30) + FOLD_WEIGHTS_BYTES,
    kind="model ZIP", hint="")

# Config keys that make Ludwig load code or remote resources (LLM models, adapters, quantised hub
# weights): refused wherever they appear with a value, before any other check.
CODE_LOADING_KEYS = {"trust_remote_code", "base_model", "adapter", "adapters", "quantization",
                     "model_parameters", "generation", "prompt"}


def unpack_model(model_zip: str, dest: str, tool_version: str) -> tuple[str, dict]:
    """Extract and validate a trained_model.zip for predict (no Ludwig: model/inference_network.py);
    returns (model_dir, manifest).

    In steps, each bounded by what the one before established: the member list and claimed sizes; the
    JSON files (MAX_JSON_BYTES each) and their checks; the network built on the meta device from the
    checked manifest (no memory); only then the weights, no larger than that network's tensors."""
    from importlib.metadata import version

    name = os.path.basename(model_zip)
    try:
        members = zip_member_sizes(model_zip, MODEL_LIMITS)
        inside = {m[len("model/"):] for m in members if m.startswith("model/")}
        unexpected = sorted(m for m in members
                            if not (m.startswith("model/") and (m[len("model/"):] in MODEL_FILES | set(OPTIONAL_FILES)
                                                                or fold_ensemble.is_member(m[len("model/"):]))))
        if unexpected:
            raise InputError(f"it holds files an Image Learner model never has ({', '.join(unexpected[:5])}); "
                             "refusing to load it")
        missing = sorted(MODEL_FILES - {m[len("model/"):] for m in members})
        if missing:
            raise InputError(f"it is not an Image Learner model ZIP (missing {', '.join(missing)})")
        largest = (MODEL_LIMITS.max_total_bytes - 3 * MAX_JSON_BYTES - sum(OPTIONAL_FILES.values())
                   - FOLD_WEIGHTS_BYTES)
        for weights in [WEIGHTS, *sorted(filter(fold_ensemble.is_member, inside))]:  # the claims, before writing
            if members[f"model/{weights}"] > largest:
                raise InputError(f"{weights} has {members[f'model/{weights}']:,} bytes, more than the {largest:,} "
                                 "of the largest model this tool loads")
        for optional, cap in OPTIONAL_FILES.items():  # the claims, before anything is written
            if members.get(f"model/{optional}", 0) > cap:
                raise InputError(f"{optional} is {members[f'model/{optional}']:,} bytes; an Image Learner "
                                 f"model's is at most {cap:,}")
        extract_zip_safely(model_zip, dest, replace(MODEL_LIMITS, max_member_bytes=MAX_JSON_BYTES),
                           keep=[f"model/{f}" for f in JSON_FILES])
        if f"model/{CARD}" in members:
            extract_zip_safely(model_zip, dest, replace(MODEL_LIMITS, max_member_bytes=OPTIONAL_FILES[CARD]),
                               keep=[f"model/{CARD}"])
        model_dir = os.path.join(dest, "model")
        _check_optional_files(model_dir)
        with offline_hub():  # the first import of timm (and the hub) may happen here
            manifest, config = validate_json_files(model_dir, tool_version, version("ludwig"))
            expected = model_tensors(manifest, config)
        # the fold ensemble's files: exactly those its checked record names, before any is written
        fold_ensemble.check_members(inside, manifest.get("ensemble"), MANIFEST)
        folds = fold_ensemble.members(manifest.get("ensemble"))
        extract_zip_safely(model_zip, dest, replace(MODEL_LIMITS, max_member_bytes=expected.max_file_bytes()),
                           keep=[f"model/{w}" for w in (WEIGHTS, *folds)])
        for weights in (WEIGHTS, *folds):  # a fold's network is the delivered one's (same width: fold_ensemble)
            model_weights.check_weights(os.path.join(model_dir, weights), expected, weights)
    except RecursionError as err:
        raise InputError(f"model {name!r}: a JSON file is nested too deeply") from err
    except InputError as err:
        raise InputError(f"model {name!r}: {err}") from err
    return model_dir, manifest


def _check_optional_files(model_dir: str) -> None:
    """The card and the ONNX file within their caps, the card UTF-8 text; neither is loaded."""
    for name, cap in OPTIONAL_FILES.items():
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) > cap:
            raise InputError(f"{name} is {os.path.getsize(path):,} bytes; an Image Learner model's is at most {cap:,}")
    card = os.path.join(model_dir, CARD)
    if os.path.isfile(card):
        try:
            with open(card, encoding="utf-8") as handle:
                handle.read()
        except UnicodeDecodeError as err:
            raise InputError(f"{CARD} is not UTF-8 text ({err.reason} at byte {err.start})") from err


def validate_json_files(model_dir: str, tool_version: str, ludwig_version: str, render=None) -> tuple[dict, dict]:
    """The manifest, config and metadata checks (pure: no Ludwig without ``render``, Ludwig's schema
    rendering of a config, ``ludwig_trainer.rendered_config``); (manifest, config)."""
    manifest = _read_json(model_dir, MANIFEST)
    check_manifest(manifest, tool_version, ludwig_version)
    if "ensemble" in manifest:  # once the task, classes and scaling are known good; the members: unpack_model
        fold_ensemble.check_record(manifest["ensemble"], manifest, MANIFEST)
    config = _read_json(model_dir, CONFIG)
    check_config(config, manifest, render)
    check_metadata(_read_json(model_dir, METADATA), config, manifest)
    return manifest, config


DECODER_WEIGHT = f"output_features.module_dict.{LABEL_FEATURE}__ludwig.decoder_obj.dense.dense.weight"


def model_tensors(manifest: dict, config: dict) -> model_weights.ExpectedTensors:
    """The tensors of the network a checked manifest describes (inference_network, built on the meta device,
    under Ludwig's names); the config's head width (filled in by Ludwig while training) must be its own."""
    from image_learner.model import inference_network

    expected = inference_network.expected_tensors(manifest)
    width = expected.tensors.get(DECODER_WEIGHT, (None, [None, None]))[1][-1]
    saved = config["output_features"][0].get("input_size")
    expect(saved == width, CONFIG, "output_features[0].input_size", saved, f"{width!r} (the backbone's output width)")
    return expected


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
                                 training["train_rows"], manifest.get("tabular"))
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
    fills = _training_fills(config, manifest)
    if render is None:  # predict: what our builder writes, and what the network is built with
        _compare(config, expected, CONFIG, "", exact=False)
        _check_network_fields(config, manifest["task"])
        _check_fills(config, fills)
        return
    expected = render(expected)
    for path in fills:
        _at(expected, path[:-1])[path[-1]] = _FILLED
    _compare(config, expected, CONFIG, "", exact=True)
    _check_fills(config, fills)


def _where(path) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)[1:]


def _check_fills(config: dict, fills: dict) -> None:
    for path, (valid, wanted) in fills.items():
        try:
            value = _at(config, path)
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{CONFIG}: {_where(path)} is missing") from None
        expect(valid(value), CONFIG, _where(path), value, wanted)


_OUTPUT = ("output_features", 0)
# The rendered defaults the network of inference_network.py reproduces (Ludwig's ECD for our config): a
# saved config that says otherwise describes another network. Our builder sets the rest (model name,
# image size, feature types, task), compared above.
NETWORK_FIELDS = {
    ("combiner", "type"): "concat", ("combiner", "fc_layers"): None, ("combiner", "num_fc_layers"): 0,
    ("combiner", "norm"): None, ("combiner", "batch_ensemble"): False,
    (*_OUTPUT, "dependencies"): [], (*_OUTPUT, "decoder", "fc_layers"): None,
    (*_OUTPUT, "decoder", "num_fc_layers"): 0, (*_OUTPUT, "decoder", "fc_norm"): None,
    (*_OUTPUT, "decoder", "use_bias"): True,
}
TASK_NETWORK_FIELDS = {
    "multiclass": {(*_OUTPUT, "decoder", "type"): "classifier", (*_OUTPUT, "calibration"): False,
                   (*_OUTPUT, "loss", "type"): "softmax_cross_entropy"},
    "binary": {(*_OUTPUT, "decoder", "type"): "regressor", (*_OUTPUT, "calibration"): False},
    "regression": {(*_OUTPUT, "decoder", "type"): "regressor", (*_OUTPUT, "clip"): None},
}


def _check_network_fields(config: dict, task: str) -> None:
    """The saved config's settings that shape the network predict builds without Ludwig, as JSON values."""
    for path, wanted in {**NETWORK_FIELDS, **TASK_NETWORK_FIELDS[task]}.items():
        try:
            value = _at(config, path)
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{CONFIG}: {_where(path)} is missing") from None
        expect(value == wanted and type(value) is type(wanted), CONFIG, _where(path), value,
               short(wanted).replace("None", "null"))


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
    for k, record in enumerate(manifest.get("tabular") or [], start=1):  # after the image: the tabular features
        size = tabular.width(record)
        fills[("input_features", k, "encoder", "saved_weights_in_checkpoint")] = (lambda v: v is True, "true")
        fills[("input_features", k, "encoder", "input_size")] = (lambda v, n=size: is_int(v, n, n), f"{size}")
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
    expected = {"checksum": checksum, IMAGE_FEATURE: image, LABEL_FEATURE: label,
                **_tabular_metadata(config, manifest.get("tabular") or [])}
    _compare(metadata, expected, METADATA, "", exact=exact)
    if vocabulary is not None:  # str2freq: counts in the training table, by which Ludwig sorted the vocabulary
        # Ludwig writes the file with sorted keys, so the counts are compared in idx2str order, not file order.
        saved = metadata[LABEL_FEATURE]["str2freq"]
        counts = [saved.get(c) for c in vocabulary]
        expect(set(saved) == set(vocabulary) and all(is_int(n, 1) for n in counts)
               and counts == sorted(counts, reverse=True), METADATA, f"{LABEL_FEATURE}.str2freq", saved,
               "a count of at least 1 per class, decreasing in idx2str order")


def _tabular_metadata(config: dict, records: list[dict]) -> dict:
    """What Ludwig derives for each --tabular-columns feature: its preprocessing, and a vector's size."""
    expected = {}
    for k, record in enumerate(records, start=1):
        feature = config["input_features"][k]
        entry = {"preprocessing": feature["preprocessing"]}
        if record["kind"] == "category":
            entry["vector_size"] = tabular.width(record)
        expected[feature["name"]] = entry
    return expected


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
