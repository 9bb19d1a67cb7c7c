#!/usr/bin/env python3
"""Preprocessing cost: the tool's input stages against a plain single-process PIL loop.

Sets of N images: ``--source ham`` (default) the first N of the 7,347 real HAM10000 images at 200x150
(jittered repeats past 7,347; common.build_ham), ``--source originals`` the 258 shared HAM10000 JPEGs
(600x450) repeated under distinct names. Each side runs in its own process, sampled every 50 ms for the
summed RSS of it and its workers:

- tool: safe unzip, CSV matching, decode + check + leakage-guard hash of every image and a PNG copy
  resized to SIZE (``--workers`` processes), image health, grouped split, then Ludwig's own preprocessing
  (``LudwigModel.preprocess``; lazy mode: no pixels are kept, each batch is decoded when training
  needs it);
- plain loop: unzip, then for each image PIL open, RGB, resize to SIZE (bilinear) into one uint8 array
  (the simplest in-memory cache).

    python bench/preprocessing.py [--counts 1000 3000 7347 10000] [--size 224] [--workers 2] [--source ham]
        [--tool-root CHECKOUT] [--no-loop]
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, build_ham, build_repeated, measured  # noqa: E402

TOOL_SIDE = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from image_learner.data import dataset_prep
from image_learner.training import ludwig_config, timm_backbone
from image_learner.data.input_utils import extract_zip_safely
csv, zip_path, work, size, workers = sys.argv[1:6]
times = {{}}
started = time.perf_counter()
files = extract_zip_safely(zip_path, os.path.join(work, "images"))
times["unzip"] = time.perf_counter() - started
started = time.perf_counter()
data = dataset_prep.prepare(csv, os.path.join(work, "images"), files,
                            dataset_prep.DataOptions(sample_id_column="lesion_id", workers=int(workers)),
                            converted_dir=os.path.join(work, "converted"), resize_to=int(size))
times["check_hash_split"] = time.perf_counter() - started
started = time.perf_counter()
timm_backbone.register_with_ludwig()
from ludwig.api import LudwigModel
times["import_ludwig"] = time.perf_counter() - started
started = time.perf_counter()
options = ludwig_config.TrainingOptions(model_name="tf_efficientnet_lite0", image_size=int(size), use_pretrained=False)
table = data.table.assign(image_path=data.table["read_path"])[["image_path", "label", "split"]]
LudwigModel(ludwig_config.build_ludwig_config(options, data.task, train_rows=len(table))).preprocess(
    dataset=table, skip_save_processed_input=True)
times["ludwig_preprocess"] = time.perf_counter() - started
print(json.dumps(times))
"""

LOOP_SIDE = """
import json, os, sys, time, zipfile
import numpy as np
from PIL import Image
zip_path, work, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = {}
started = time.perf_counter()
with zipfile.ZipFile(zip_path) as archive:
    archive.extractall(work)
    names = archive.namelist()
times["unzip"] = time.perf_counter() - started
started = time.perf_counter()
cache = np.empty((len(names), size, size, 3), dtype=np.uint8)
for i, name in enumerate(names):
    with Image.open(os.path.join(work, name)) as img:
        cache[i] = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
times["decode_resize_cache"] = time.perf_counter() - started
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 3000, 7347, 10000])
    parser.add_argument("--source", choices=("ham", "originals"), default="ham")
    parser.add_argument("--tool-root", default=ROOT, help="checkout whose modules run (before/after)")
    parser.add_argument("--no-loop", action="store_true", help="the tool's side only")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    base = args.work or tempfile.mkdtemp(prefix="bench_preprocessing_")
    print(f"tool: {args.tool_root}")
    print("| images | method | wall s | stages (s) | peak RSS GB | load before/after |\n|---|---|---|---|---|---|")
    for n in args.counts:
        os.makedirs(base, exist_ok=True)
        csv, zip_path = build_ham(n, base) if args.source == "ham" else build_repeated(n, base)
        runs = [] if args.no_loop else [(f"plain PIL loop, 1 process, {args.size} px uint8 cache", [
            sys.executable, "-c", LOOP_SIDE, zip_path, os.path.join(base, "loop"), str(args.size)])]
        runs += [(f"tool, {w} worker(s)", [sys.executable, "-c", TOOL_SIDE.format(root=args.tool_root), csv, zip_path,
                                           os.path.join(base, f"tool{w}"), str(args.size), str(w)])
                 for w in args.workers]
        for label, cmd in runs:
            load = os.getloadavg()[0]
            stages, wall, peak = measured(cmd)
            cells = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            print(f"| {n} | {label} | {wall:.1f} | {cells} | {peak:.2f} | {load:.1f}/{os.getloadavg()[0]:.1f} |",
                  flush=True)
            for leftover in ("loop", *(f"tool{w}" for w in args.workers)):
                shutil.rmtree(os.path.join(base, leftover), ignore_errors=True)
        os.remove(zip_path)
    if not args.work:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
