#!/usr/bin/env python3
"""The GPU check (issue #13): does the tool keep a GPU busy, and how long does the tutorial take there?
Run through bench/gpu_check.sh (its header says how to call it with the device tool); prints a table.

(a) a raw timm training loop's images/s (images pre-decoded in GPU memory: the ideal loop), float32
    and mixed precision, NCHW and channels-last (``throughput.raw_loop``);
(b) the tool's images/s through ``ludwig_trainer.train`` with the same model, size, batch and
    optimizer (``throughput.tool``, epoch-timing callback), mixed precision on and off, and with
    Ludwig decoding everything up front (``eager``) to show what per-batch decoding costs; ratios to (a);
(c) peak GPU memory of each;
(d) the tutorial's scale through the command line: ROWS images (HAM10000 originals + flips, repeated),
    1 and EPOCHS epochs, and the projected wall time of the 30-epoch tutorial configuration;
(e) the predict subcommand's images/s on the same images;
(f) whether the reports (training and predict) hold Grad-CAM maps.

    python bench/gpu_check.py [--smoke] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, run_tool  # noqa: E402
from plain_loop import decode_files  # noqa: E402
from throughput import raw_loop, tool  # noqa: E402
from image_learner.training import devices  # noqa: E402
from image_learner.data import image_check  # noqa: E402

CARRIED_IMAGES = os.path.join(ROOT, ".gpu_carry", "ham10000")
DEMO_ZIP = os.path.join(ROOT, "test-data", "ham10000_demo_images.zip")
DEMO_CSV = os.path.join(ROOT, "test-data", "ham10000_demo_metadata.csv")
FULL = dict(model="caformer_s18", cli_model="caformer_s18_384", size=384, batch=32, raw_images=500, epochs=4,
            rows=1400, tutorial_epochs=3, workers=8, predict_rows=1500)
SMOKE = dict(model="test_efficientnet", cli_model="test_efficientnet", size=32, batch=8, raw_images=32, epochs=2,
             rows=140, tutorial_epochs=2, workers=1, predict_rows=150)


PARTS = ("raw", "tool", "tutorial", "predict")


def base_images() -> tuple[list[tuple[str, bytes, str, str]], str]:
    """(name, JPEG bytes, label, lesion id) of each original and its horizontal flip, and the source."""
    items = []
    if os.path.isfile(os.path.join(CARRIED_IMAGES, "labels.csv")):
        for row in pd.read_csv(os.path.join(CARRIED_IMAGES, "labels.csv")).itertuples():
            with open(os.path.join(CARRIED_IMAGES, row.image_path), "rb") as handle:
                original = handle.read()
            buf = io.BytesIO()
            ImageOps.mirror(Image.open(io.BytesIO(original)).convert("RGB")).save(buf, format="JPEG", quality=90)
            items += [(f"{row.image_id}_orig.jpg", original, row.dx, row.lesion_id),
                      (f"{row.image_id}_flip.jpg", buf.getvalue(), row.dx, row.lesion_id)]
        source = f"{len(items) // 2} HAM10000 originals (512x384) + flips, from {CARRIED_IMAGES}"
        return _classes_interleaved(items), source
    table = pd.read_csv(DEMO_CSV)
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        for row in table.itertuples():
            items.append((os.path.basename(row.image_path), archive.read(row.image_path), row.label, row.lesion_id))
    return items, (f"the {len(items)} small demo images of test-data/ (upscaled: per-batch decoding is cheaper "
                   "than with real photos)")


def _classes_interleaved(items: list) -> list:
    """Lesions taken from each class in turn, so that the first rows of a set smaller than the base (the
    smoke run) still hold every class with enough lesions for the split's checks."""
    by_class: dict[str, list] = {}
    for item in items:
        by_class.setdefault(item[2], []).append(item)
    queues = [[[i for i in members if i[3] == lesion] for lesion in dict.fromkeys(i[3] for i in members)]
              for _, members in sorted(by_class.items())]
    ordered = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered += queue.pop(0)
    return ordered


def build_set(rows: int, folder: str) -> tuple[str, str, list[str], list[str], str]:
    """A ZIP + CSV of ``rows`` images (the base set repeated under distinct names); also the paths and
    labels of the base images unpacked (for the raw loop). Returns (csv, zip, paths, labels, description)."""
    items, source = base_images()
    os.makedirs(os.path.join(folder, "base"), exist_ok=True)
    paths, records = [], []
    for name, data, _, _ in items:
        paths.append(os.path.join(folder, "base", name))
        with open(paths[-1], "wb") as handle:
            handle.write(data)
    zip_path, csv_path = os.path.join(folder, "images.zip"), os.path.join(folder, "metadata.csv")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(rows):
            name, data, label, lesion = items[i % len(items)]
            member = f"r{i // len(items)}_{name}"
            archive.writestr(member, data)
            records.append({"image_path": member, "label": label, "lesion_id": lesion})
    pd.DataFrame(records).to_csv(csv_path, index=False)
    return csv_path, zip_path, paths, [label for _, _, label, _ in items], f"{rows} rows from {source}"


def gpu_memory(fn):
    """(result, peak GPU memory in GiB or None on a CPU) of fn()."""
    if not torch.cuda.is_available():
        return fn(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    return result, torch.cuda.max_memory_allocated() / 2**30


def rate(n_images: int, seconds: list[float]) -> float:
    """Images/s: the median epoch after the first (which includes warm-up and cuDNN autotuning)."""
    return n_images / float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def saliency(report: str) -> str:
    """How many Grad-CAM maps the report holds, or why it holds none."""
    with open(report, encoding="utf-8") as handle:
        html = handle.read()
    maps = html.count('alt="saliency of')
    if maps:
        return f"{maps} maps"
    match = re.search(r"Where the model looked.*?Not shown: ([^<]*)", html, re.S)
    return "none: " + (match.group(1).strip() if match else "section missing")


def measure_raw(s: dict, base: list[str], labels: list[str], amp: str, step) -> dict:
    """(a) + (c): the raw loop on pre-decoded images, every combination of precision and layout."""
    n = min(s["raw_images"], len(base) - 16)  # the tool's run gets 16 more for validation and test
    x = decode_files(base[:n], s["size"])
    raw = {}
    for precision in ("float32", amp):
        for layout in ("nchw", "channels_last"):
            seconds, peak = gpu_memory(lambda: raw_loop(
                s["model"], x, len(set(labels)), s["batch"], s["epochs"], channels_last=layout == "channels_last",
                device="cuda" if torch.cuda.is_available() else "cpu",
                amp_dtype=None if precision == "float32" else precision))
            raw[f"{precision} {layout}"] = {"images_per_s": rate(n, seconds), "peak_gib": peak}
            step(f"(a) raw loop {precision} {layout}: {raw[f'{precision} {layout}']}")
    return raw


def measure_tool(s: dict, base: list[str], labels: list[str], work: str, step) -> dict:
    """(b) + (c): the tool on the raw loop's images, as its image check leaves them (model-sized PNGs)."""
    n = min(s["raw_images"], len(base) - 16)
    checked = image_check.check_images("/", [p.lstrip("/") for p in base[:n + 16]], os.path.join(work, "png"),
                                       workers=min(8, os.cpu_count() or 1), resize_to=s["size"])
    table = pd.DataFrame({"image_path": checked.paths, "label": labels[:n + 16], "split": [0] * n + [1] * 8 + [2] * 8})
    runs = {}
    for name, mode, mixed in (("mixed precision", "resized", "on"), ("float32", "resized", "off"),
                              ("mixed precision, eager decode", "eager", "on")):
        seconds, peak = gpu_memory(lambda: tool(s["model"], table, s["size"], s["batch"], s["epochs"], mode,
                                                mixed_precision=mixed))  # on a CPU Ludwig drops it
        runs[name] = {"images_per_s": rate(n, seconds), "peak_gib": peak}
        step(f"(b) tool, {name}: {runs[name]}")
    return runs


def ratios(raw: dict, tools: dict, amp: str) -> dict:
    def best(precision):
        return max(raw[f"{precision} nchw"]["images_per_s"], raw[f"{precision} channels_last"]["images_per_s"])

    return {"tool/raw, mixed precision": tools["mixed precision"]["images_per_s"] / best(amp),
            "tool/raw, float32": tools["float32"]["images_per_s"] / best("float32"),
            "raw mixed precision/float32": best(amp) / best("float32"),
            "tool mixed precision/float32": tools["mixed precision"]["images_per_s"] / tools["float32"]["images_per_s"]}


def measure_tutorial(s: dict, csv: str, zip_path: str, work: str, step) -> dict:
    """(d) + (f): the command line at the tutorial's scale, 1 and E epochs (every epoch run)."""
    cli = ["--model-name", s["cli_model"], "--no-use-pretrained", "--image-size", str(s["size"]),
           "--batch-size", str(s["batch"]), "--early-stop", "0", "--sample-id-column", "lesion_id",
           "--preprocessing-workers", str(s["workers"])]
    runs = {}
    for epochs in (1, s["tutorial_epochs"]):
        summary = run_tool(csv, zip_path, os.path.join(work, f"run{epochs}"), *cli, "--epochs", str(epochs),
                           report=True)
        runs[epochs] = {"wall_s": summary["wall_s"], "device": summary["device"], "stages_s": summary["timings_s"]}
        step(f"(d) {epochs} epoch(s): {summary['wall_s']:.1f} s wall; {summary['device']}; {summary['timings_s']}")
    e = s["tutorial_epochs"]
    per_epoch = (runs[e]["wall_s"] - runs[1]["wall_s"]) / (e - 1)
    return {"runs": runs, "per_epoch_s": per_epoch, "projected_30_epochs_s": runs[1]["wall_s"] + 29 * per_epoch,
            "grad_cam_training_report": saliency(os.path.join(work, f"run{e}", "report.html"))}


def predict_once(model_zip: str, csv: str, zip_path: str, out: str, batch: int, *extra: str) -> dict:
    """One predict command (a fresh process, timed from outside); its run_summary timings."""
    started = time.time()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "predict", "--model",
                           model_zip, "--image-zip", zip_path, "--csv-file", csv, "--output-dir", out,
                           "--batch-size", str(batch), "--overwrite", *extra], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"predict failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "run_summary.json")) as handle:
        timings = json.load(handle)["timings_s"]
    return {"wall_s": time.time() - started, "timings_s": timings}


def measure_predict(s: dict, work: str, training_stages: dict) -> dict:
    """(e) + (f): the predict subcommand with the E-epoch model on PREDICT_ROWS images (with labels: metrics
    and the report with Grad-CAM) and on 8 (the fixed cost, from outside); its own fixed_s + images_per_s
    (run_summary timings) against Ludwig's prediction alone in training (rows / the "predicting" stage)."""
    model_zip = os.path.join(work, f"run{s['tutorial_epochs']}", "trained_model.zip")
    runs = {}
    for rows in (8, s["predict_rows"]):
        csv, zip_path, *_ = build_set(rows, os.path.join(work, f"predict_set{rows}"))
        out = os.path.join(work, f"predict{rows}")
        runs[rows] = predict_once(model_zip, csv, zip_path, out, s["batch"])
        runs[rows]["images_per_s_end_to_end"] = rows / runs[rows]["wall_s"]
        if rows > 8:
            runs[rows]["grad_cam_predict_report"] = saliency(os.path.join(out, "report.html"))
    n = s["predict_rows"]
    in_training = next(v for k, v in training_stages.items() if k.startswith("predicting"))
    ludwig_rate = s["rows"] / in_training
    per_image_outside = (runs[n]["wall_s"] - runs[8]["wall_s"]) / (n - 8)
    return {"runs": runs, "fixed_s_outside": runs[8]["wall_s"], "images_per_s_outside": 1 / per_image_outside,
            "fixed_s": runs[n]["timings_s"]["fixed_s"], "images_per_s": runs[n]["timings_s"]["images_per_s"],
            "images_per_s_ludwig_predict_in_training": ludwig_rate,
            "ratio_to_ludwig": runs[n]["timings_s"]["images_per_s"] / ludwig_rate,
            "grad_cam_predict_report": runs[n]["grad_cam_predict_report"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes, to prove the script on a CPU")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the results here (and to $OUT/gpu_check.json)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all); predict needs tutorial")
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    started = time.time()
    amp = devices.autocast_dtype_name() if torch.cuda.is_available() else "bfloat16"  # CPU autocast has bf16
    import ludwig
    import timm

    res: dict = {"device": devices.describe(), "torch": torch.__version__, "ludwig": ludwig.__version__,
                 "timm": timm.__version__, "cpus": os.cpu_count(), "settings": s, "amp_dtype": amp, "errors": {}}
    json_paths = [p for p in (args.json, os.path.join(os.environ["OUT"], "gpu_check.json")
                              if os.environ.get("OUT") else None) if p]
    print(f"{res['device']}; torch {res['torch']}, Ludwig {res['ludwig']}, timm {res['timm']}, {res['cpus']} CPUs; "
          f"{s}", flush=True)

    def step(name: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {name}", flush=True)

    def attempt(key: str, fn) -> None:
        """One measurement; a failure is recorded and the others still run (device time is scarce)."""
        try:
            res[key] = fn()
        except Exception as err:  # noqa: BLE001 - reported, never hidden
            res["errors"][key] = f"{type(err).__name__}: {err}"[-2000:]
            step(f"{key} FAILED: {res['errors'][key]}")
        res["total_s"] = time.time() - started
        for path in json_paths:
            with open(path, "w") as handle:
                json.dump(res, handle, indent=2)

    work = args.work or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    try:
        csv, zip_path, base, labels, res["data"] = build_set(s["rows"], work)
        step(f"data: {res['data']}")
        if "raw" in args.parts:
            attempt("raw", lambda: measure_raw(s, base, labels, amp, step))
        if "tool" in args.parts:
            attempt("tool", lambda: measure_tool(s, base, labels, work, step))
        if "raw" in args.parts and "tool" in args.parts:
            attempt("ratios", lambda: ratios(res["raw"], res["tool"], amp))
        if "tutorial" in args.parts:
            attempt("tutorial", lambda: measure_tutorial(s, csv, zip_path, work, step))
        if "predict" in args.parts:
            attempt("predict", lambda: measure_predict(s, work, res["tutorial"]["runs"][1]["stages_s"]))
        step(f"(e) predict: {res.get('predict')}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(res)
    if res["errors"]:
        sys.exit(1)


def print_table(res: dict) -> None:
    """The results as Markdown, for BENCHMARKS.md; whatever failed is named instead."""
    def gib(v):
        return "n/a (CPU)" if v is None else f"{v:.1f} GiB"

    s = res["settings"]
    lines = [f"\n## GPU check: {res['device']}",
             f"torch {res['torch']}, Ludwig {res['ludwig']}, timm {res['timm']}, {res['cpus']} CPUs; {s['model']}, "
             f"{s['size']} px, batch {s['batch']}, random init; mixed precision = {res['amp_dtype']}; "
             f"data: {res.get('data')}", "", "| measure | images/s | peak GPU memory |", "|---|---|---|"]
    if not res["device"].startswith("cuda"):
        lines.insert(1, "(no GPU: the tool's runs are float32 whatever they ask, as Ludwig's mixed precision is "
                        "CUDA autocast)")
    for key, label in (("raw", "(a) raw loop"), ("tool", "(b) tool")):
        lines += [f"| {label}, {k} | {v['images_per_s']:.1f} | {gib(v['peak_gib'])} |"
                  for k, v in res.get(key, {}).items()]
    if "ratios" in res:
        lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    tut, pred = res.get("tutorial"), res.get("predict")
    if tut:
        lines += ["", f"(d) {s['rows']} images, {s['size']} px, through the command line: "
                  + "; ".join(f"{k} epoch(s) {v['wall_s']:.1f} s" for k, v in tut["runs"].items())
                  + f"; {tut['per_epoch_s']:.1f} s per further epoch; **projected 30 epochs: "
                  f"{tut['projected_30_epochs_s'] / 60:.1f} min** (goal: at most 2.5 min)",
                  f"(f) Grad-CAM in the training report: {tut['grad_cam_training_report']}"]
    if pred:
        n = s["predict_rows"]
        lines += [f"(e) predict of {n} images: **fixed {pred['fixed_s']:.1f} s + {pred['images_per_s']:.1f} images/s** "
                  f"(its run_summary timings); from outside: 8 images {pred['fixed_s_outside']:.1f} s, {n} images "
                  f"{pred['runs'][n]['wall_s']:.1f} s, so {pred['images_per_s_outside']:.1f} images/s per further "
                  f"image; Ludwig's prediction alone (in training, {s['rows']} images): "
                  f"{pred['images_per_s_ludwig_predict_in_training']:.1f} images/s; ratio "
                  f"**{pred['ratio_to_ludwig']:.2f}** (goal >= 0.8)",
                  f"(f) Grad-CAM in the predict report: {pred['grad_cam_predict_report']}"]
    if "ratios" in res:
        lines.append(f"goal: tool/raw with mixed precision >= 0.9: {res['ratios']['tool/raw, mixed precision']:.2f}")
    lines += [f"FAILED {k}: {v}" for k, v in res["errors"].items()]
    lines.append(f"total check time {res.get('total_s', 0):.0f} s")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
