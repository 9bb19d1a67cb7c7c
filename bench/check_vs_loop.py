#!/usr/bin/env python3
"""The image check against single-process PIL loops, on the same files and cores (issue 22 #3).

Why BENCHMARKS.md had 0.56x (preprocessing table) and the HAM10000 run 3x: the loops compared were
different, and so were the images. This times, on one set of extracted image files:
- the tool's check as training runs it (image_check.check_images: decode, checks, leakage hashes and
  thumbnail, image-health properties, resized copy at copy_png_level: a stored PNG) in W worker processes;
- "tool_level1": the same at compress_level 1 (training's copies before issue 22 #3);
- loop "stored": one process, decode -> RGB -> resize -> the same stored PNG (image_check.write_stored_png:
  byte for byte the tool's copies);
- loop "png0": the same written by PIL at compress_level 0 (PIL's own stored PNG: filtered rows);
- loop "png1": PIL at compress_level 1 (the copies the tool wrote before);
- loop "png6": PIL's default compression (the loop of the 3x measurement; slow: off by default);
- loop "memory": decode -> RGB -> resize -> a uint8 array kept in memory (the loop of the 0.56x one);
each with wall and CPU seconds (the tool's CPU: its process and its worker processes), and the per-image
cost of each step in one process, which says where the time goes.

    python bench/check_vs_loop.py --source /work/shared/data/ham10000/ham10000_200x150 --count 7347 --size 224
    python bench/check_vs_loop.py --source /work/shared/data/ham10000/originals_600x450 --count 258 --size 224 \
        --loops stored png0 png1 png6 memory
    python bench/check_vs_loop.py --source ... --workers 1 2 8 --loops stored --no-level1   # a row per worker count
"""

import argparse
import glob
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.data.image_check import check_image, check_images, copy_png_level  # noqa: E402
from image_learner.data.image_check import write_stored_png  # noqa: E402
from image_learner.data.image_properties import image_properties  # noqa: E402
from image_learner.data.leakage_guard import image_hashes, image_thumbnail  # noqa: E402


def loop(paths: list[str], out: str, size: int, kind: str) -> tuple[float, float]:
    """(wall s, CPU s) of one process decoding, resizing and writing (or keeping) every image."""
    started, cpu = time.perf_counter(), time.process_time()
    kept = np.empty((len(paths), size, size, 3), np.uint8) if kind == "memory" else None
    for k, path in enumerate(paths):
        with Image.open(path) as img:
            small = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        if kind == "memory":
            kept[k] = np.asarray(small)
        elif kind == "stored":
            write_stored_png(os.path.join(out, f"{k}.png"), small)
        else:
            small.save(os.path.join(out, f"{k}.png"), compress_level=int(kind[3:]))
    return time.perf_counter() - started, time.process_time() - cpu


def tool(root: str, rel: list[str], out: str, workers: int, size: int, level: int) -> tuple[float, float]:
    """(wall s, CPU s of this process and its finished worker processes) of check_images as training runs it."""
    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    started, before = time.perf_counter(), cpu()
    check_images(root, rel, out, workers, size, png_level=level)
    return time.perf_counter() - started, cpu() - before


def steps(paths: list[str], size: int, scratch: str) -> dict:
    """Milliseconds per image of each step, one process."""
    spent = dict.fromkeys(["decode_check", "hashes_thumbnail", "health", "resize", "stored", "png0", "png1"], 0.0)
    for k, path in enumerate(paths):  # distinct files: overwriting one waits on its writeback
        t = time.perf_counter()
        img, _ = check_image(path)
        spent["decode_check"] += time.perf_counter() - t
        t = time.perf_counter()
        image_hashes(img), image_thumbnail(img)
        spent["hashes_thumbnail"] += time.perf_counter() - t
        t = time.perf_counter()
        image_properties(img)
        spent["health"] += time.perf_counter() - t
        t = time.perf_counter()
        small = img.resize((size, size), Image.Resampling.BILINEAR)
        spent["resize"] += time.perf_counter() - t
        t = time.perf_counter()
        write_stored_png(os.path.join(scratch, f"stored{k}.png"), small)
        spent["stored"] += time.perf_counter() - t
        for level in (0, 1):
            t = time.perf_counter()
            small.save(os.path.join(scratch, f"png{level}_{k}.png"), compress_level=level)
            spent[f"png{level}"] += time.perf_counter() - t
    return {k: round(1000 * v / len(paths), 2) for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--count", type=int, default=1000, help="first N images (sorted names), repeated if fewer")
    parser.add_argument("--size", type=int, nargs="+", default=[224])
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="the tool's worker processes; several: one row each, the loops timed once")
    parser.add_argument("--no-level1", action="store_true", help="skip the tool at zlib level 1 (before issue 22 #3)")
    parser.add_argument("--loops", nargs="+", default=["stored", "png0", "png1"],
                        choices=["stored", "png0", "png1", "png6", "memory"])
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
            loops = {"load_before": os.getloadavg()[0]}
            for kind in args.loops:
                out = os.path.join(work, f"loop_{kind}_{size}")
                os.makedirs(out)
                seconds = loop(paths, out, size, kind)
                loops[f"loop_{kind}_s"], loops[f"loop_{kind}_cpu_s"] = (round(v, 2) for v in seconds)
                shutil.rmtree(out)  # a fresh folder each time: overwriting files waits on their writeback
            per_image = steps(paths[:200], size, work)
            for workers in args.workers:
                row = {"size": size, "images": args.count, "image": shape, "cpu_count": os.cpu_count(),
                       "workers": workers, **loops}
                level = copy_png_level(args.count, size)
                for label, png_level in (("tool", level), ("tool_level1", 1))[:1 if args.no_level1 else 2]:
                    out = os.path.join(work, f"{label}_{size}")
                    row[f"{label}_s"], row[f"{label}_cpu_s"] = (round(v, 2) for v in tool(root, rel, out, workers,
                                                                                          size, png_level))
                    shutil.rmtree(out)
                row["tool_png_level"] = level
                for kind in args.loops:
                    row[f"ratio_vs_{kind}"] = round(row[f"loop_{kind}_s"] / row["tool_s"], 2)
                    if not args.no_level1:
                        row[f"ratio_level1_tool_vs_{kind}"] = round(row[f"loop_{kind}_s"] / row["tool_level1_s"], 2)
                row["ms_per_image_one_process"] = per_image
                row["load_after"] = os.getloadavg()[0]
                rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
