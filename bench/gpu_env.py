#!/usr/bin/env python3
"""The environment for bench/gpu_check.sh on the device tool's GPU machine, which has PyTorch (CUDA) and
many packages but not Ludwig, and no network.

``prepare`` (here, with the project's environment): writes ``.gpu_carry/`` (ignored by git, carried to
the GPU machine): ``overlay.tar.gz``, the installed files of the distributions the tool imports that the
GPU machine lacks (Ludwig, plotly, pydantic, ...; ~15 MB), plus timm and typing-extensions so that their
versions match the tested ones; and ``ham10000/``, the shared HAM10000 originals (../shared does not
travel) resized to 512x384 JPEG (~14 MB), and ``ham10000_200x150/``, the first SMALL_IMAGES of the shared
200x150 set as they are (~12 MB; the image check's second kind of image). The GPU machine's own torch,
torchvision, numpy, pandas, scikit-learn, Pillow, ... are used as they are: they are compiled against its CUDA.

``blocker DIR`` (here, for the CPU smoke run): writes ``DIR/sitecustomize.py``, which makes every module
the GPU machine does not have (per DEVICE_HAS) and the overlay does not bring fail to import, in this
process and its children, so that the smoke run proves the overlay is complete.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARRY_DIR = os.path.join(ROOT, ".gpu_carry")
SMALL_IMAGES = 3000  # of the 7,347 200x150 HAM10000 images: what the carry's 64 MiB leaves room for

# The device's image 'cuda': the package list in /work/.library/device/KINDS.md, read on 2026-11-17.
DEVICE_HAS = set("""
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
    equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
    grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
    interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
    nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
    nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp
""".split())

# What a training + predict + report run imports (sys.modules after one, mapped to distributions)
# that DEVICE_HAS lacks; bitsandbytes is left out (125 MB; Ludwig imports it only if present).
# timm and typing-extensions are there too, but carried so their versions are the tested ones
# (pydantic needs typing-extensions >= 4.16).
CARRY = ("ludwig", "timm", "plotly", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "typing-extensions", "marshmallow", "dataclasses-json", "decorator", "dill", "retry", "jsonschema",
         "jsonschema-specifications", "referencing", "rpds-py", "httpx2", "httpcore2", "truststore",
         "backports-zstd", "wcwidth", "cleanlab", "termcolor")
# The GPU machine brings its own CUDA stack, under names that differ from ours (nvidia-cublas-cu13).
OWN_GPU_STACK = re.compile(r"^(nvidia-|cuda-|triton|torch$|torchvision$|torchaudio$)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _files(dist: md.Distribution) -> list[str]:
    return [str(f) for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)]


def prepare(shared_images: str | None, small_images: str | None = None) -> None:
    os.makedirs(CARRY_DIR, exist_ok=True)
    overlay = os.path.join(CARRY_DIR, "overlay.tar.gz")
    with tarfile.open(overlay + ".tmp", "w:gz") as tar:
        for name in CARRY:
            dist = md.distribution(name)
            for rel in _files(dist):
                path = str(dist.locate_file(rel))
                if os.path.isfile(path):
                    tar.add(path, arcname=rel)
            print(f"overlay: {name} {dist.version}")
    os.replace(overlay + ".tmp", overlay)
    print(f"{overlay}: {os.path.getsize(overlay) / 1e6:.1f} MB")
    if shared_images and os.path.isdir(shared_images):
        _copy_originals(shared_images, os.path.join(CARRY_DIR, "ham10000"))
    else:
        print(f"no shared HAM10000 originals at {shared_images}: the check will build its images from "
              "test-data/ham10000_demo_images.zip (small images, upscaled: decoding cost understated)")
    if small_images and os.path.isdir(small_images):
        _copy_small(small_images, os.path.join(CARRY_DIR, "ham10000_200x150"))


def _copy_small(source: str, dest: str) -> None:
    """The first SMALL_IMAGES files (sorted names) of the 200x150 set, byte for byte."""
    import shutil

    names = sorted(n for n in os.listdir(source) if n.lower().endswith(".jpg"))[:SMALL_IMAGES]
    os.makedirs(dest, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
    size = sum(os.path.getsize(os.path.join(dest, n)) for n in names)
    print(f"{dest}: {len(names)} images, {size / 1e6:.1f} MB")


def _copy_originals(source: str, dest: str) -> None:
    """The originals resized to 512x384 (the model input is 384 px; the full 600x450 set is 69 MB, over
    what the device tool carries) as JPEG q90, with their labels."""
    import pandas as pd
    from PIL import Image

    labels = pd.read_csv(os.path.join(source, "labels.csv"))
    os.makedirs(dest, exist_ok=True)
    rows = []
    for row in labels.itertuples():
        name = f"{row.image_id}.jpg"
        with Image.open(os.path.join(source, row.image_path)) as img:
            img.convert("RGB").resize((512, 384), Image.Resampling.LANCZOS).save(os.path.join(dest, name), quality=90)
        rows.append({"image_path": name, "image_id": row.image_id, "lesion_id": row.lesion_id, "dx": row.dx})
    pd.DataFrame(rows).to_csv(os.path.join(dest, "labels.csv"), index=False)
    size = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
    print(f"{dest}: {len(rows)} images, {size / 1e6:.1f} MB")


def write_blocker(folder: str) -> None:
    present = DEVICE_HAS | {normalise(n) for n in CARRY} | {"image-learner"}
    blocked = sorted(
        top for top, dists in md.packages_distributions().items()
        if not top.startswith("_") and all(normalise(d) not in present and not OWN_GPU_STACK.match(normalise(d))
                                           for d in dists))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as handle:
        handle.write(f'''"""Written by bench/gpu_env.py: what the GPU machine lacks cannot be imported here either."""
import importlib.abc
import sys

BLOCKED = {set(blocked)!r}


class _NotOnTheGpuMachine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)", name=name)
        return None


sys.meta_path.insert(0, _NotOnTheGpuMachine())
''')
    print(f"{folder}/sitecustomize.py blocks {len(blocked)} modules: {', '.join(blocked[:20])} ...")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--shared-images", default=os.path.join(ROOT, "..", "shared", "data", "ham10000",
                                                              "originals_600x450"))
    prep.add_argument("--small-images", default=os.path.join(ROOT, "..", "shared", "data", "ham10000",
                                                             "ham10000_200x150", "images"))
    block = sub.add_parser("blocker")
    block.add_argument("folder")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.shared_images, args.small_images)
    else:
        write_blocker(args.folder)
    sys.exit(0)


if __name__ == "__main__":
    main()
