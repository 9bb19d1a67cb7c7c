"""Peak memory and exit code of ``image-learner predict`` on crafted model ZIPs (issue 20, findings 1-2).

Each case runs predict in a fresh process; its peak RSS is the child's ``ru_maxrss``. Cases:
- genuine: test-data/tiny_regression_model.zip as it is;
- large_backbone: the same model with model_name vit_large_patch16_224, the config re-rendered with the
  project's own functions and a weights file holding only the decoder [1, 1024];
- padded_manifest: the genuine model with a 300 MB ``pad`` field in its manifest (~2.5 MB zipped).

    python bench/model_zip_memory.py [case ...]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TEST_DATA = os.path.join(ROOT, "test-data")
MODEL = os.path.join(TEST_DATA, "tiny_regression_model.zip")
IMAGES = os.path.join(TEST_DATA, "ham10000_demo_images.zip")
MANIFEST, CONFIG, WEIGHTS = ("model/image_learner.json", "model/model_hyperparameters.json",
                             "model/model_weights.safetensors")
DECODER = "output_features.module_dict.label__ludwig.decoder_obj.dense.dense."


def members(path: str = MODEL) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}


def write_zip(path: str, files: dict) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def large_backbone(files: dict, model_name: str = "vit_large_patch16_224", width: int = 1024) -> dict:
    """The finding's ZIP: another backbone named everywhere, a config our checks accept, decoder-only weights."""
    import numpy as np
    from safetensors.numpy import save

    from image_learner.training import ludwig_trainer
    from image_learner.model import model_archive

    manifest = json.loads(files[MANIFEST])
    manifest["model_name"] = manifest["training"]["options"]["model_name"] = model_name
    config = ludwig_trainer.rendered_config(model_archive.expected_config(manifest))
    config["input_features"][0]["encoder"]["saved_weights_in_checkpoint"] = True
    config["trainer"]["gradient_accumulation_steps"] = 1
    config["output_features"][0]["input_size"] = config["output_features"][0]["decoder"]["input_size"] = width
    weights = {DECODER + "weight": np.zeros((1, width), np.float32), DECODER + "bias": np.zeros(1, np.float32)}
    return {**files, MANIFEST: json.dumps(manifest).encode(), CONFIG: json.dumps(config).encode(),
            WEIGHTS: save(weights)}


def padded_manifest(files: dict, pad_bytes: int = 300 * 1024**2) -> dict:
    """The genuine manifest with a ``pad`` field of ``pad_bytes`` (valid JSON, refused only once parsed): a
    letter every 400 spaces zips ~120x, under the image ZIP's 200x ratio limit."""
    manifest = json.loads(files[MANIFEST])
    unit = "".join(chr(97 + k % 26) + " " * 400 for k in range(2000))  # longer than deflate's 32 KB window
    manifest["pad"] = unit * (pad_bytes // len(unit))
    return {**files, MANIFEST: json.dumps(manifest).encode()}


def run_predict(model_zip: str, work: str, address_space: int | None = None) -> tuple[int, float, str]:
    """(exit code, peak RSS in GB, stderr tail) of predict in a child process, its address space capped."""
    def cap():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {**os.environ, "TMPDIR": work, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "predict", "--model", model_zip,
                           "--image-zip", IMAGES, "--output-dir", os.path.join(work, "out")],
                          env=env, cwd=work, capture_output=True, text=True, preexec_fn=cap)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # largest child so far, KB -> GB
    return done.returncode, peak, done.stderr[-600:]


CASES = {"genuine": lambda f: f, "large_backbone": large_backbone, "padded_manifest": padded_manifest}


def main(names: list[str]) -> None:
    for name in names or list(CASES):  # genuine first: ru_maxrss of children is a running maximum
        with tempfile.TemporaryDirectory() as work:
            model = write_zip(os.path.join(work, "model.zip"), CASES[name](members()))
            code, peak, err = run_predict(model, work)
            print(json.dumps({"case": name, "zip_bytes": os.path.getsize(model), "rc": code,
                              "peak_rss_gb": round(peak, 2),
                              "message": err.strip().splitlines()[-1] if err.strip() else ""}))


if __name__ == "__main__":
    main(sys.argv[1:])
