"""A model ZIP cannot make predict allocate more than the file it is (issue 20, findings 1-2): the model is
built on the meta device from the validated config and the weights' header must list exactly its tensors;
the ZIP has its own limits (JSON members a few MiB, weights no larger than the architecture implies,
parameters and members capped), checked before anything is parsed or loaded. Crafted models are built from
test-data/tiny_regression_model.zip with bench/model_zip_memory.py's helpers."""

import json
import os
import struct
import subprocess
import sys

import pytest

import image_learner_cli
from bench.model_zip_memory import WEIGHTS, large_backbone, members, padded_manifest, write_zip
from conftest import DEMO_ZIP, ROOT, make_zip

# Predict in a child whose address space, once the libraries predict needs are imported, may grow by only
# argv[1] bytes: the cap is relative to what the imports map here, so it holds on any machine.
CAPPED_PREDICT = """import resource, sys
import image_learner_cli, ludwig.api, ludwig.models.ecd
from image_learner.training import ludwig_trainer
from image_learner.model import predictor
size = [line for line in open('/proc/self/status') if line.startswith('VmSize')][0].split()[1]
cap = int(size) * 1024 + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
print('RESULT', image_learner_cli.main(sys.argv[2:]), flush=True)
"""
GROWTH = 1024**3  # the genuine tiny model predicts within it; vit_large's float32 parameters alone are 1.2 GB


def predict_capped(work, model_zip, growth=GROWTH):
    """(exit code, stderr) of predict in a fresh process whose address space may grow by ``growth`` bytes
    after its imports; CUDA hidden (initialising it maps tens of GB)."""
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CAPPED_PREDICT, str(growth), "predict", "--model", model_zip,
                           "--image-zip", DEMO_ZIP, "--output-dir", os.path.join(work, "out")], env=env, cwd=work,
                          capture_output=True, text=True, timeout=600)
    result = [line.split() for line in done.stdout.splitlines() if line.startswith("RESULT")]
    return (int(result[0][1]) if result else done.returncode), done.stderr


def test_decoder_only_weights_for_a_large_backbone_exit_2_in_a_capped_address_space(tmp_path):
    """The finding: a 5 KB ZIP naming vit_large_patch16_224 (304 M parameters: 1.2 GB of float32 to build,
    as much again to load) with decoder-only weights, under an address space that may grow by 1 GiB after
    the imports (the genuine tiny model predicts within it; before, this ZIP died there out of memory):
    refused from the weights' header, before the backbone exists."""
    crafted = write_zip(str(tmp_path / "crafted.zip"), large_backbone(members()))
    assert os.path.getsize(crafted) < 10_000
    code, err = predict_capped(tmp_path / "crafted", crafted)
    assert code == 2, err[-2000:]
    assert "model_weights.safetensors does not fit the model its config describes: 294 of its 296 tensors " \
           "are missing" in err and "Traceback" not in err


def _refused(tmp_path, capsys, model_zip, message):
    out = tmp_path / "p"
    code = image_learner_cli.main(["predict", "--model", model_zip, "--image-zip", DEMO_ZIP, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err, err[-2000:]
    assert os.listdir(out) == []
    return err


def test_a_model_above_the_parameter_cap_is_refused_before_it_is_built(tmp_path, capsys):
    """vit_7b_patch16_dinov3 (6.7 B parameters, 25 GiB float32) passed every check before; its parameter
    count on the meta device (with the regressor: 6,716,030,976 + 4,096 + 1) is refused."""
    crafted = write_zip(str(tmp_path / "crafted.zip"), large_backbone(members(), "vit_7b_patch16_dinov3", 4096))
    _refused(tmp_path, capsys, crafted, "the model its config describes has 6,716,035,073 parameters, more than "
                                        "the 1,000,000,000 this tool loads")


def test_a_padded_manifest_is_refused_before_it_is_parsed(tmp_path, capsys):
    """A 300 MB manifest zipped ~120x (under the image ZIP's 200x ratio), parsed whole before: refused from
    the size the archive claims for it, so nothing is written or parsed ("pad is not a field" never comes)."""
    crafted = write_zip(str(tmp_path / "padded.zip"), padded_manifest(members()))
    assert os.path.getsize(crafted) < 10 * 1024**2
    err = _refused(tmp_path, capsys, crafted, "ZIP member 'model/image_learner.json' is larger than the limit of "
                                              "4194304 bytes for it (model ZIP)")
    assert "not a field" not in err


def _padded_header(weights: bytes, pad: int) -> bytes:
    """The same tensors with ``pad`` spaces after the header JSON: still a valid safetensors file."""
    length = struct.unpack("<Q", weights[:8])[0]
    header = weights[8:8 + length] + b" " * pad
    return struct.pack("<Q", len(header)) + header + weights[8 + length:]


def test_weights_larger_than_the_architecture_implies_are_refused(tmp_path, capsys):
    """A genuine weights file with 6 MiB of header padding loads in safetensors (the old checks passed it);
    the file may hold the model's tensor data, the length field and at most MAX_HEADER_BYTES of header."""
    from image_learner.model import model_weights

    files = members()
    assert model_weights.MAX_HEADER_BYTES == 4 * 1024**2
    data = len(files[WEIGHTS]) - 8 - struct.unpack("<Q", files[WEIGHTS][:8])[0]
    crafted = make_zip(tmp_path / "m.zip", {**files, WEIGHTS: _padded_header(files[WEIGHTS], 6 * 1024**2)})
    _refused(tmp_path, capsys, crafted, "ZIP member 'model/model_weights.safetensors' is larger than the limit of "
                                        f"{data + 8 + 4 * 1024**2} bytes")


def test_weights_header_must_list_each_dtype_as_the_model_has_it(tmp_path):
    """Names and shapes right, one dtype wrong (float64 in place of float32): refused by model_weights."""
    import numpy as np
    from safetensors.numpy import load, save

    from image_learner.model import model_weights

    files = members()
    tensors = load(files[WEIGHTS])
    name = "output_features.module_dict.label__ludwig.decoder_obj.dense.dense.bias"
    tensors[name] = tensors[name].astype(np.float64)
    (tmp_path / "w.safetensors").write_bytes(save(tensors))
    genuine = {k: (("F32" if v.dtype == np.float32 else "I64"), list(v.shape)) for k, v in load(files[WEIGHTS]).items()}
    expected = model_weights.ExpectedTensors(genuine, [], len(files[WEIGHTS]), 0)
    with pytest.raises(model_weights.InputError, match=f"{name} has dtype F64, expected F32"):
        model_weights.check_weights(str(tmp_path / "w.safetensors"), expected)


def test_too_many_members_are_refused_before_any_is_read(tmp_path, capsys):
    from image_learner.model.model_archive import MODEL_LIMITS

    # 16 files, and the fold weights --ensemble may add (fold_ensemble.MAX_FOLDS)
    files = {**members(), **{f"model/extra/{k}.txt": b"x" for k in range(MODEL_LIMITS.max_members)}}
    _refused(tmp_path, capsys, make_zip(tmp_path / "m.zip", files),
             f"model ZIP has {len(files)} members, more than the limit of {MODEL_LIMITS.max_members}")
    assert MODEL_LIMITS.max_members == 36


def test_a_member_size_limit_is_checked_on_the_claim_before_anything_is_written(tmp_path):
    """input_utils: max_member_bytes refuses a member from the size the archive claims, writing nothing."""
    from image_learner.data.input_utils import InputError, ZipLimits, extract_zip_safely

    archive = make_zip(tmp_path / "a.zip", {"small.json": b"{}", "big.json": b" " * 5000})
    with pytest.raises(InputError, match=r"'big.json' is larger than the limit of 4096 bytes for it \(image ZIP\)"):
        extract_zip_safely(archive, str(tmp_path / "out"), ZipLimits(max_member_bytes=4096))
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    assert extract_zip_safely(archive, str(tmp_path / "out2"), ZipLimits(max_member_bytes=4096),
                              keep=["small.json"]) == ["small.json"]


def test_the_configs_head_width_must_be_the_backbones(tmp_path, capsys):
    """Ludwig fills output_features[0].input_size in while training and ignores it when building: it must be
    the width of the model built on the meta device (256 for test_efficientnet), not any positive integer."""
    files = members()
    config = json.loads(files["model/model_hyperparameters.json"])
    config["output_features"][0]["input_size"] = config["output_features"][0]["decoder"]["input_size"] = 999
    crafted = make_zip(tmp_path / "m.zip", {**files, "model/model_hyperparameters.json": json.dumps(config).encode()})
    _refused(tmp_path, capsys, crafted, "model_hyperparameters.json: output_features[0].input_size is 999, expected "
                                        "256 (the backbone's output width)")


def test_an_image_size_above_the_cap_is_refused(tmp_path, capsys):
    files = members()
    manifest = json.loads(files["model/image_learner.json"])
    manifest["image_size"] = manifest["training"]["options"]["image_size"] = 4096
    crafted = make_zip(tmp_path / "m.zip", {**files, "model/image_learner.json": json.dumps(manifest).encode()})
    _refused(tmp_path, capsys, crafted, "training.options.image_size is 4096, expected an integer from 16 to 1024")
