"""A tampered model ZIP is refused before anything is loaded: exit 2 with a message naming the file and
field, never a traceback, nothing executed. Tampered copies are built from test-data/tiny_model.zip
(multiclass), test-data/tiny_regression_model.zip (regression) or from a binary model trained once for this
module."""

import copy
import io
import json
import os
import zipfile
from dataclasses import fields

import numpy as np
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, ROOT, TEST_DATA, make_zip

TINY_MODEL = os.path.join(TEST_DATA, "tiny_model.zip")
TINY_REGRESSION_MODEL = os.path.join(TEST_DATA, "tiny_regression_model.zip")
MANIFEST, CONFIG, METADATA, WEIGHTS = ("model/image_learner.json", "model/model_hyperparameters.json",
                                       "model/training_set_metadata.json", "model/model_weights.safetensors")
DECODER = "output_features.module_dict.label__ludwig.decoder_obj.dense.dense.weight"


def _members(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}


@pytest.fixture(scope="module")
def multiclass():
    return _members(TINY_MODEL)


@pytest.fixture(scope="module")
def regression():
    return _members(TINY_REGRESSION_MODEL)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("binary") / "train"
    assert image_learner_cli.main([
        "--csv-file", os.path.join(TEST_DATA, "ham10000_demo_binary.csv"), "--image-zip", DEMO_ZIP,
        "--output-dir", str(out), "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32",
        "--epochs", "1", "--batch-size", "16", "--preprocessing-workers", "1", "--class-weights", "balanced",
        "--no-report"]) == 0
    return _members(out / "trained_model.zip")


def _edit_json(members, name, edit):
    members = dict(members)
    document = json.loads(members[name])
    edit(document)
    members[name] = json.dumps(document).encode()
    return members


def _set(path, value=None, delete=False):
    """An edit that sets (or deletes) the value at ``path`` (keys and list indices)."""
    def edit(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return edit


def _refused(tmp_path, capsys, members, message, image_zip=DEMO_ZIP):
    model = make_zip(tmp_path / "model.zip", members)
    out = tmp_path / "p"
    code = image_learner_cli.main(["predict", "--model", model, "--image-zip", image_zip, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert os.listdir(out) == []
    return err


def _validate_model_dir(model_dir: str, tool_version: str, ludwig_version: str) -> dict:
    """The checks of an unpacked model, as unpack_model makes them in steps: the JSON files without a renderer
    (the config must contain what our builder makes), then the weights against the model they describe."""
    from image_learner.model import model_archive, model_weights

    manifest, config = model_archive.validate_json_files(model_dir, tool_version, ludwig_version, None)
    model_weights.check_weights(os.path.join(model_dir, model_archive.WEIGHTS),
                                model_archive.model_tensors(manifest, config))
    return manifest


def test_the_genuine_models_are_accepted_by_the_pure_core(multiclass, tmp_path):
    """The JSON checks need no Ludwig: without a renderer the config must contain what our builder makes."""
    from image_learner.model import model_archive
    from image_learner.model import model_manifest
    from image_learner import run_files
    from image_learner.training.ludwig_config import TrainingOptions

    assert set(model_manifest.OPTION_RULES) == {f.name for f in fields(TrainingOptions)}
    with zipfile.ZipFile(TINY_MODEL) as archive:
        archive.extractall(tmp_path)
    with run_files.scratch_tempdir(str(tmp_path)):  # as in predict: timm's import writes temp files
        manifest = _validate_model_dir(str(tmp_path / "model"), run_files.TOOL_VERSION, "0.17.10")
    assert manifest["format_version"] == model_manifest.FORMAT_VERSION == 6
    assert manifest["label_vocabulary"] == json.loads(multiclass[METADATA])["label"]["idx2str"]


def test_a_vocabulary_out_of_alphabetical_order_is_accepted(multiclass, tmp_path):
    """Ludwig numbers the classes most frequent first and saves the metadata with sorted keys: a genuine
    model whose frequency order is not alphabetical must load (a smoke run of bench/gpu_check.py found this)."""
    from image_learner.model import model_archive
    from image_learner import run_files

    def reorder(metadata):
        label = metadata["label"]
        label["idx2str"] = label["idx2str"][::-1]
        label["str2idx"] = {c: k for k, c in enumerate(label["idx2str"])}
        label["str2freq"] = dict(sorted({c: 30 - k for k, c in enumerate(label["idx2str"])}.items()))

    members = _edit_json(multiclass, METADATA, reorder)
    members = _edit_json(members, MANIFEST, _set(("label_vocabulary",), lambda v: v[::-1]))
    with zipfile.ZipFile(make_zip(tmp_path / "model.zip", members)) as archive:
        archive.extractall(tmp_path)
    with run_files.scratch_tempdir(str(tmp_path)):
        manifest = _validate_model_dir(str(tmp_path / "model"), run_files.TOOL_VERSION, "0.17.10")
    assert manifest["label_vocabulary"] == ["vasc", "nv", "mel", "df", "bkl", "bcc", "akiec"]


def _swap_two(values):
    values = list(values)
    values[0], values[1] = values[1], values[0]
    return values


def _swap_vocabulary(metadata):
    label = metadata["label"]
    label["idx2str"] = _swap_two(label["idx2str"])
    label["str2idx"] = {c: k for k, c in enumerate(label["idx2str"])}
    label["str2freq"] = {c: label["str2freq"][c] for c in label["idx2str"]}


MANIFEST_CASES = {
    "other tool_version": (_set(("tool_version",), "0.0.9"), "tool_version is '0.0.9', expected '0.1.0'"),
    "other ludwig_version": (_set(("ludwig_version",), "0.10.0"), "ludwig_version is '0.10.0'"),
    "old format_version": (_set(("format_version",), 2), "format_version 2; this tool reads"),
    "classes swapped": (_set(("classes",), _swap_two), "in sorted order"),
    "a class missing": (_set(("classes",), lambda c: c[:-1]), "label_vocabulary is"),
    "vocabulary swapped": (_set(("label_vocabulary",), _swap_two), "training_set_metadata.json: label.idx2str[0]"),
    "image_size string": (_set(("image_size",), "32"), "image_size is '32', expected training.options.image_size"),
    "options image_size string": (_set(("training", "options", "image_size"), "32"),
                                  "training.options.image_size is '32', expected an integer"),
    "model_name differs": (_set(("model_name",), "resnet18"), "model_name is 'resnet18', expected training.options"),
    "model_name from the hub": (_set(("training", "options", "model_name"), "hf-hub:evil/model"),
                                "expected a timm model name"),
    "model_name unknown to timm": (_set(("training", "options", "model_name"), "evil_net"),
                                   "training.options.model_name is 'evil_net', expected a timm model name"),
    "task regression": (_set(("task",), "regression"), "classes is ['akiec'"),
    "target_scaling on multiclass": (_set(("target_scaling",), {"mean": 0.0, "std": 1.0}),
                                     "target_scaling is {'mean': 0.0, 'std': 1.0}, expected null"),
    "threshold on multiclass": (_set(("threshold",), 0.5), "threshold is 0.5, expected null"),
    "epochs boolean": (_set(("training", "options", "epochs"), True), "training.options.epochs is True"),
    "learning_rate zero": (_set(("training", "options", "learning_rate"), 0), "learning_rate is 0"),
    "unknown augmentation": (_set(("training", "options", "augmentation"), ["evil"]), "augmentation is ['evil']"),
    "unknown option": (_set(("training", "options", "trust_remote_code"), True),
                       "training.options.trust_remote_code is not a field"),
    "unknown field": (_set(("extra",), 1), "image_learner.json: extra is not a field"),
    "class weights without balanced": (_set(("training", "class_weights"), {"akiec": 1.0}),
                                       "training.class_weights is"),
    "not an object": (lambda m: m.clear(), "format None format_version None"),
    "unknown validation_metric": (_set(("training", "options", "validation_metric"), "auto"),
                                  "training.options.validation_metric is 'auto', expected a metric name"),
    "validation_metric of another task": (_set(("training", "options", "validation_metric"), "mae"),
                                          "validation_metric is 'mae', expected one of"),
    "unknown threshold_metric": (_set(("training", "options", "threshold_metric"), "precision"),
                                 "training.options.threshold_metric is 'precision'"),
    "threshold option on multiclass": (_set(("training", "options", "threshold"), 0.4),
                                       "threshold is None, expected training.options.threshold (0.4)"),
    "threshold option 1": (_set(("training", "options", "threshold"), 1.0),
                           "training.options.threshold is 1.0, expected null or a number between 0 and 1"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_tampered_manifest_is_refused(multiclass, tmp_path, capsys, case):
    edit, message = MANIFEST_CASES[case]
    _refused(tmp_path, capsys, _edit_json(multiclass, MANIFEST, edit), message)


FIELDS = ("format", "format_version", "tool_version", "task", "classes", "positive_label", "threshold",
          "image_size", "model_name", "ludwig_version", "label_vocabulary", "target_scaling", "training", "trust")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("how", ["missing", "null"])
def test_manifest_field_missing_or_null_is_refused(multiclass, binary, tmp_path, capsys, field, how):
    """positive_label and threshold are null in a multiclass manifest: a binary model is tampered there; so is
    target_scaling, null except in a regression model."""
    members = binary if field in ("positive_label", "threshold") else multiclass
    if field == "target_scaling" and how == "null":
        members = _members(TINY_REGRESSION_MODEL)
    edit = _set((field,), delete=True) if how == "missing" else _set((field,), None)
    _refused(tmp_path, capsys, _edit_json(members, MANIFEST, edit), field)


@pytest.mark.parametrize("option", ["model_name", "image_size", "use_pretrained", "fine_tune", "epochs",
                                    "early_stop", "batch_size", "learning_rate", "random_seed", "augmentation",
                                    "class_weights", "lr_schedule", "preprocessing_workers", "preprocessing_mode",
                                    "device", "mixed_precision", "validation_metric", "threshold_metric"])
def test_training_option_null_is_refused(multiclass, tmp_path, capsys, option):
    _refused(tmp_path, capsys, _edit_json(multiclass, MANIFEST, _set(("training", "options", option), None)),
             f"training.options.{option} is None")


@pytest.mark.parametrize("edit, message", [
    (_set(("threshold",), 1.5), "threshold is 1.5, expected a number from 0 to 1"),
    (_set(("threshold",), -0.1), "threshold is -0.1"),
    (_set(("threshold",), "0.5"), "threshold is '0.5'"),
    (_set(("positive_label",), lambda p: "mel" if p == "nv" else "nv"), "positive_label is"),
    (_set(("classes",), _swap_two), "positive_label is"),
    (_set(("training", "positive_weight"), -1.0), "training.positive_weight is -1.0"),
    (_set(("training", "options", "threshold"), 0.123), "expected training.options.threshold (0.123)"),
    (_set(("training", "options", "validation_metric"), "accuracy"), "model_hyperparameters.json"),
], ids=["threshold above 1", "threshold below 0", "threshold string", "positive_label other class",
        "classes swapped", "negative positive_weight", "fixed threshold not the one applied",
        "validation_metric not the config's"])
def test_tampered_binary_manifest_is_refused(binary, tmp_path, capsys, edit, message):
    _refused(tmp_path, capsys, _edit_json(binary, MANIFEST, edit), message)


def _flip_task(task):
    return _set(("task",), task)


REGRESSION_CASES = {
    "task flipped to multiclass": (_flip_task("multiclass"), "image_learner.json: target_scaling is"),
    "task flipped to binary": (_flip_task("binary"), "image_learner.json: target_scaling is"),
    "task flipped, scaling dropped": (lambda m: (m.update(task="multiclass", target_scaling=None)),
                                      "image_learner.json: classes is [], expected 3 or more class names"),
    "classes added": (_set(("classes",), ["young", "old"]), "classes is ['young', 'old'], expected []"),
    "threshold set": (_set(("threshold",), 0.5), "threshold is 0.5, expected null for a regression model"),
    "vocabulary set": (_set(("label_vocabulary",), ["a"]), "label_vocabulary is ['a'], expected null"),
    "std zero": (_set(("target_scaling", "std"), 0.0), "target_scaling is"),
    "mean string": (_set(("target_scaling", "mean"), "50"), "target_scaling is"),
    "scaling extra key": (_set(("target_scaling", "code"), "x"), "target_scaling is"),
    "balanced class weights": (_set(("training", "options", "class_weights"), "balanced"),
                               "training.options.class_weights is 'balanced', expected 'none' for a regression"),
}


@pytest.mark.parametrize("case", REGRESSION_CASES)
def test_tampered_regression_manifest_is_refused(regression, tmp_path, capsys, case):
    edit, message = REGRESSION_CASES[case]
    _refused(tmp_path, capsys, _edit_json(regression, MANIFEST, edit), message)


def test_tampered_regression_files_are_refused(regression, multiclass, tmp_path, capsys):
    """A number output turned into a category in the config, a vocabulary slipped into Ludwig's metadata, and
    a 7-class head in place of the 1-unit regressor are each refused."""
    for sub in "cmw":
        (tmp_path / sub).mkdir()
    config = _set(("output_features", 0, "type"), "category")
    _refused(tmp_path / "c", capsys, _edit_json(regression, CONFIG, config),
             "model_hyperparameters.json: output_features[0].type is 'category', expected 'number'")
    vocabulary = _set(("label", "idx2str"), ["young", "old"])
    _refused(tmp_path / "m", capsys, _edit_json(regression, METADATA, vocabulary),
             "training_set_metadata.json: label.idx2str is not a field Image Learner writes")
    head = _tensors(regression)
    head[DECODER] = _tensors(multiclass)[DECODER]
    _refused(tmp_path / "w", capsys, _with_tensors(regression, head), "has shape [7, 256], expected [1, 256]")


def _llm_exploit(marker, evil_dir):
    """The finding: an LLM config whose base_model is a folder of the images ZIP with custom code."""
    def edit(config):
        config.clear()
        config.update({
            "model_type": "llm", "base_model": evil_dir, "trust_remote_code": True,
            "input_features": [{"name": "image_path", "type": "text"}],
            "output_features": [{"name": "label", "type": "text"}],
            "preprocessing": {"global_max_sequence_length": 64}, "backend": {"type": "local"},
            "adapters": {"adapters": {"a": {"type": "lora"}}, "active": "a",
                         "merge": {"name": "m", "sources": ["a"], "weights": [1.0]}}})
    code = (f"open({str(marker)!r}, 'w').write('executed')\nfrom transformers import PretrainedConfig\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    payload = {"evil/config.json": json.dumps({"model_type": "evil",
                                               "auto_map": {"AutoConfig": "evil_config.EvilConfig"}}).encode(),
               "evil/evil_config.py": code.encode()}
    return edit, payload


def test_llm_config_with_remote_code_is_refused_and_nothing_runs(multiclass, tmp_path, capsys):
    marker = tmp_path / "marker"
    edit, payload = _llm_exploit(marker, str(tmp_path / "p" / ".work" / "images" / "evil"))
    images = make_zip(tmp_path / "images.zip", {**_members(DEMO_ZIP), **payload})
    err = _refused(tmp_path, capsys, _edit_json(multiclass, CONFIG, edit), "never loads code", image_zip=images)
    assert "base_model" in err
    assert not marker.exists()


def _add_feature(kind):
    def edit(config):
        extra = copy.deepcopy(config[kind][0])
        extra["name"] = extra["column"] = "other"
        config[kind].append(extra)
    return edit


CONFIG_CASES = {
    "trust_remote_code top level": (_set(("trust_remote_code",), True), "trust_remote_code is set"),
    "trust_remote_code in the encoder": (_set(("input_features", 0, "encoder", "trust_remote_code"), True),
                                         "input_features[0].encoder.trust_remote_code is set"),
    "model_type llm": (_set(("model_type",), "llm"), "model_type is 'llm', expected 'ecd'"),
    "backend ray": (_set(("backend",), {"type": "ray"}), "backend is {'type': 'ray'}"),
    "extra input feature": (_add_feature("input_features"), "input_features has 2 entries, expected 1"),
    "extra output feature": (_add_feature("output_features"), "output_features has 2 entries, expected 1"),
    "other encoder type": (_set(("input_features", 0, "encoder", "type"), "stacked_cnn"),
                           "input_features[0].encoder.type is 'stacked_cnn', expected 'image_learner_timm'"),
    "other model_name": (_set(("input_features", 0, "encoder", "model_name"), "resnet18"),
                         "input_features[0].encoder.model_name is 'resnet18', expected 'test_efficientnet'"),
    "other image size": (_set(("input_features", 0, "preprocessing", "height"), 64),
                         "input_features[0].preprocessing.height is 64, expected 32"),
    "output type binary": (_set(("output_features", 0, "type"), "binary"),
                           "output_features[0].type is 'binary', expected 'category'"),
    "output renamed": (_set(("output_features", 0, "name"), "evil"), "output_features[0].name is 'evil'"),
    "num_classes": (_set(("output_features", 0, "num_classes"), 8), "output_features[0].num_classes is 8"),
    "weights not in checkpoint": (_set(("input_features", 0, "encoder", "saved_weights_in_checkpoint"), False),
                                  "input_features[0].encoder.saved_weights_in_checkpoint is False, expected true"),
    "pretrained download": (_set(("input_features", 0, "encoder", "use_pretrained"), True),
                            "input_features[0].encoder.use_pretrained is True, expected False"),
    # a model whose augmented batches were prefetched in a background thread (not reproducible)
    "augmentations prefetched": (_set(("input_features", 0, "preprocessing", "prefetch_size"), 4),
                                 "input_features[0].preprocessing.prefetch_size is 4, expected 0"),
    # predict runs the network without Ludwig (inference_network.py): the config is compared as JSON with what
    # our builder writes and with the settings that shape that network; fields Ludwig alone would read (an
    # unknown top-level key, another type's defaults) are no longer compared with Ludwig's rendering
    "combiner layers": (_set(("combiner", "num_fc_layers"), 1), "combiner.num_fc_layers is 1, expected 0"),
    "decoder layers": (_set(("output_features", 0, "decoder", "num_fc_layers"), 2),
                       "output_features[0].decoder.num_fc_layers is 2, expected 0"),
    "calibration": (_set(("output_features", 0, "calibration"), True),
                    "output_features[0].calibration is True, expected False"),
    "cumulative loss": (_set(("output_features", 0, "loss", "type"), "corn"),
                        "output_features[0].loss.type is 'corn', expected 'softmax_cross_entropy'"),
    "not an object": (lambda c: c.clear(), "model_type is None"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_tampered_config_is_refused(multiclass, tmp_path, capsys, case):
    edit, message = CONFIG_CASES[case]
    _refused(tmp_path, capsys, _edit_json(multiclass, CONFIG, edit), f"model_hyperparameters.json: {message}")


METADATA_CASES = {
    "classes swapped": (_swap_vocabulary, "label.idx2str[0] is 'bcc', expected 'akiec'"),
    "unknown class": (_set(("label", "idx2str", 0), "evil"), "label.idx2str[0] is 'evil'"),
    "frequencies": (_set(("label", "str2freq"), lambda f: {k: 0 for k in f}), "label.str2freq is"),
    "vocab_size": (_set(("label", "vocab_size"), 8), "label.vocab_size is 8, expected 7"),
    "image height": (_set(("image_path", "preprocessing", "height"), 64), "image_path.preprocessing.height is 64"),
    "resize params": (_set(("image_path", "lazy_image_params", "img_width"), 16),
                      "image_path.lazy_image_params.img_width is 16, expected 32"),
    "extra feature": (_set(("other",), {}), "other is not a field Image Learner writes"),
}


@pytest.mark.parametrize("case", METADATA_CASES)
def test_tampered_training_set_metadata_is_refused(multiclass, tmp_path, capsys, case):
    edit, message = METADATA_CASES[case]
    _refused(tmp_path, capsys, _edit_json(multiclass, METADATA, edit), f"training_set_metadata.json: {message}")


@pytest.mark.parametrize("name", [MANIFEST, CONFIG, METADATA])
def test_invalid_json_is_refused(multiclass, tmp_path, capsys, name):
    _refused(tmp_path, capsys, {**multiclass, name: b'{"format": '}, f"{os.path.basename(name)} is not valid JSON")


def _tensors(members):
    from safetensors.numpy import load

    return load(members[WEIGHTS])


def _with_tensors(members, tensors):
    from safetensors.numpy import save

    return {**members, WEIGHTS: save(tensors)}


def _pickled(members):
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in _tensors(members).items()}, buffer)
    return {**members, WEIGHTS: buffer.getvalue()}


def _renamed(members, old_prefix, new_prefix):
    tensors = _tensors(members)
    name = next(k for k in tensors if k.startswith(old_prefix))
    tensors[new_prefix + name[len(old_prefix):] + ".x"] = tensors.pop(name)
    return _with_tensors(members, tensors)


def _reshaped(members, which):
    tensors = _tensors(members)
    name = DECODER if which == "decoder" else next(k for k in tensors if k.endswith("conv_stem.weight"))
    tensors[name] = np.concatenate([tensors[name], tensors[name]])
    return _with_tensors(members, tensors)


WEIGHT_CASES = {
    "pickle (torch.save)": (_pickled, "model_weights.safetensors is not a valid safetensors file"),
    "truncated": (lambda m: {**m, WEIGHTS: m[WEIGHTS][:len(m[WEIGHTS]) // 2]}, "not a valid safetensors file"),
    "garbage": (lambda m: {**m, WEIGHTS: os.urandom(4096)}, "not a valid safetensors file"),
    "empty": (lambda m: {**m, WEIGHTS: b""}, "not a valid safetensors file"),
    "foreign tensor": (lambda m: _renamed(m, "input_features.", "evil."), "holds tensors of no Image Learner model"),
    "renamed tensor": (lambda m: _renamed(m, "input_features.", "input_features."), "does not fit the model"),
    "classifier shape": (lambda m: _reshaped(m, "decoder"), "has shape [14, 256], expected [7, 256]"),
    "backbone shape": (lambda m: _reshaped(m, "backbone"), "does not fit the model"),
}


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_tampered_weights_are_refused(multiclass, tmp_path, capsys, case):
    tamper, message = WEIGHT_CASES[case]
    _refused(tmp_path, capsys, tamper(multiclass), message)


def test_hub_is_offline_while_loading_and_restored_after(monkeypatch):
    from image_learner.model import model_archive

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with model_archive.offline_hub():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_a_predict_run_has_the_hub_offline_from_its_first_import(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: in a fresh predict process that import
    happens inside the offline block, so the hub stays offline although the variable is restored."""
    import subprocess
    import sys

    script = ("import image_learner_cli\n"
              f"code = image_learner_cli.main(['predict', '--model', {TINY_MODEL!r}, '--image-zip', {DEMO_ZIP!r}, "
              f"'--output-dir', {str(tmp_path / 'p')!r}])\n"
              "import os, huggingface_hub.constants as c\n"
              "print('RESULT', code, c.HF_HUB_OFFLINE, os.environ.get('HF_HUB_OFFLINE'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "RESULT 0 True None" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_the_genuine_models_predict(request, tmp_path, kind):
    """The models the tampering starts from are accepted: test-data/tiny_model.zip and tiny_regression_model.zip
    (the Galaxy tool tests' models) and the binary one with balanced class weights."""
    model = make_zip(tmp_path / "model.zip", request.getfixturevalue(kind))
    assert image_learner_cli.main(["predict", "--model", model, "--image-zip", DEMO_ZIP, "--csv-file", DEMO_CSV,
                                   "--output-dir", str(tmp_path / "p"), "--no-evaluate"]) == 0
