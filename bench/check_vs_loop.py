#!/usr/bin/env python3
"""The image check against single-process PIL loops, on the same files and cores (issue 22 #3).

Why BENCHMARKS.md had 0.56x (preprocessing table) and the HAM10000 run 3x: the loops compared were
different, and so were the images. This times, on one set of extracted image files:
- the tool's check as training runs it (image_check.check_images: decode, checks, leakage hashes and
  thumbnail, resized PNG copy at compress_level 1) in W worker processes;
- the same check without the hashes (as predict runs it);
- loop "png1": one process, decode -> RGB -> resize -> PNG at compress_level 1 (the same copies);
- loop "png6": the same with PIL's default PNG compression (the loop of the 3x measurement);
- loop "memory": decode -> RGB -> resize -> a uint8 array kept in memory (the loop of the 0.56x one);
and the per-image cost of each step (decode, hashes + thumbnail, resize, PNG level 1, PNG level 6) in one
process, which says where the time goes.

    python bench/check_vs_loop.py --source /work/shared/data/ham10000/ham10000_200x150 --count 1000 --size 128 224
    python bench/check_vs_loop.py --source /work/shared/data/ham10000/originals_600x450 --count 258 --size 224
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.data.image_check import check_image, check_images  # noqa: E402
from image_learner.data.leakage_guard import image_hashes, image_thumbnail  # noqa: E402


def loop(paths: list[str], out: str, size: int, kind: str) -> float:
    started = time.perf_counter()
    kept = np.empty((len(paths), size, size, 3), np.uint8) if kind == "memory" else None
    for k, path in enumerate(paths):
        with Image.open(path) as img:
            small = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        if kind == "memory":
            kept[k] = np.asarray(small)
        else:
            small.save(os.path.join(out, f"{k}.png"), compress_level=1 if kind == "png1" else 6)
    return time.perf_counter() - started


def steps(paths: list[str], size: int) -> dict:
    """Milliseconds per image of each step, one process."""
    spent = dict.fromkeys(["decode_check", "hashes_thumbnail", "resize", "png1", "png6"], 0.0)
    for path in paths:
        t = time.perf_counter()
        img, _ = check_image(path)
        spent["decode_check"] += time.perf_counter() - t
        t = time.perf_counter()
        image_hashes(img), image_thumbnail(img)
        spent["hashes_thumbnail"] += time.perf_counter() - t
        t = time.perf_counter()
        small = img.resize((size, size), Image.Resampling.BILINEAR)
        spent["resize"] += time.perf_counter() - t
        for level in (1, 6):
            t = time.perf_counter()
            small.save(os.path.join(tempfile.gettempdir(), "step.png"), compress_level=level)
            spent[f"png{level}"] += time.perf_counter() - t
    return {k: round(1000 * v / len(paths), 2) for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--count", type=int, default=1000, help="first N images (sorted names), repeated if fewer")
    parser.add_argument("--size", type=int, nargs="+", default=[224])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    files = sorted(p for p in glob.glob(os.path.join(args.source, "**", "*"), recursive=True)
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, "in")
        os.makedirs(root)
        rel = []
        for k in range(args.count):  # copies under distinct names, as a ZIP would extract them
            name = f"{k:05d}{os.path.splitext(files[k % len(files)])[1]}"
            shutil.copyfile(files[k % len(files)], os.path.join(root, name))
            rel.append(name)
        paths = [os.path.join(root, r) for r in rel]
        with Image.open(paths[0]) as first:
            shape = f"{first.size[0]}x{first.size[1]} {first.format}"
        rows = []
        for size in args.size:
            row = {"size": size, "images": args.count, "image": shape, "cpu_count": os.cpu_count(),
                   "load_before": os.getloadavg()[0]}
            for kind in ("png1", "png6", "memory"):
                out = os.path.join(work, f"loop_{kind}_{size}")
                os.makedirs(out)
                row[f"loop_{kind}_s"] = round(loop(paths, out, size, kind), 2)
            for label, fingerprints in (("tool_check_s", True), ("tool_check_no_hashes_s", False)):
                t = time.perf_counter()
                check_images(root, rel, os.path.join(work, f"{label}_{size}"), args.workers, size, fingerprints)
                row[label] = round(time.perf_counter() - t, 2)
            row["ratio_vs_png1"] = round(row["loop_png1_s"] / row["tool_check_s"], 2)
            row["ratio_vs_png6"] = round(row["loop_png6_s"] / row["tool_check_s"], 2)
            row["ratio_vs_memory"] = round(row["loop_memory_s"] / row["tool_check_s"], 2)
            row["ms_per_image_one_process"] = steps(paths[:200], size)
            row["load_after"] = os.getloadavg()[0]
            rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
