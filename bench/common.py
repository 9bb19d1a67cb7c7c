"""Shared pieces of the benchmarks: build HAM10000 sets from ../shared, run the tool, read its numbers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pandas as pd
import psutil
from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "ham10000", "originals_600x450")
HAM = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")  # 7,347 images
WEIGHTS_CACHE = os.path.join(os.environ.get("IMAGE_LEARNER_ENV_DIR",
                                            os.path.join(os.path.expanduser("~"), ".cache", "image-learner")),
                             "weights")


def build_set(out_dir: str, side: int | None, flips: bool) -> tuple[str, str]:
    """ZIP + CSV from the 258 shared originals: resized to side x side (None: untouched), optionally
    with a horizontally flipped copy of each (the Galaxy tutorial's recipe). Returns (csv, zip)."""
    os.makedirs(out_dir, exist_ok=True)
    labels = pd.read_csv(os.path.join(SHARED, "labels.csv"))
    rows = []
    zip_path = os.path.join(out_dir, "images.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for row in labels.itertuples():
            img = Image.open(os.path.join(SHARED, row.image_path)).convert("RGB")
            if side:
                img = img.resize((side, side), Image.Resampling.LANCZOS)
            variants = [("orig", img)] + ([("flip", ImageOps.mirror(img))] if flips else [])
            for kind, picture in variants:
                buf = io.BytesIO()
                picture.save(buf, format="PNG" if side else "JPEG", quality=95)
                name = f"{row.image_id}_{kind}.{'png' if side else 'jpg'}"
                archive.writestr(name, buf.getvalue())
                rows.append({"image_path": name, "label": row.dx, "lesion_id": row.lesion_id})
    csv_path = os.path.join(out_dir, "metadata.csv")
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path, zip_path


def lite0_weights() -> str:
    """Offline ImageNet weights for tf_efficientnet_lite0 (converted once, cached beside the env)."""
    path = os.path.join(WEIGHTS_CACHE, "tf_efficientnet_lite0.safetensors")
    if not os.path.exists(path):
        os.makedirs(WEIGHTS_CACHE, exist_ok=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "image_learner", "training", "offline_weights.py"), path], check=True)
    return path


def run_tool(csv: str, zip_path: str, out: str, *args: str, report: bool = False) -> dict:
    """Run the CLI (without the report unless asked: these benchmarks compare training); returns
    run_summary.json plus the wall time of the whole command."""
    started = time.time()
    cmd = [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", csv, "--image-zip", zip_path,
           "--output-dir", out, "--overwrite", *args, *([] if report else ["--no-report"])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(out, "run_summary.json")) as handle:
        summary = json.load(handle)
    summary["wall_s"] = time.time() - started
    return summary


def build_ham(n: int, out_dir: str) -> tuple[str, str]:
    """The first n HAM10000 200x150 images (jittered repeats past 7,347) as a stored ZIP + CSV."""
    meta = pd.read_csv(os.path.join(HAM, "metadata.csv"))
    rows = []
    zip_path = os.path.join(out_dir, f"ham_{n}.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(n):
            row = meta.iloc[i % len(meta)]
            source = os.path.join(HAM, row.image_path)
            name = f"{i:05d}_{row.image_id}.jpg"
            if i < len(meta):
                archive.write(source, name)
            else:
                with Image.open(source) as img:
                    pixels = np.asarray(img.convert("RGB"), dtype=np.int16) + 2
                buf = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
                archive.writestr(name, buf.getvalue())
            rows.append({"image_path": name, "label": row.dx, "lesion_id": row.lesion_id})
    csv_path = os.path.join(out_dir, f"ham_{n}.csv")
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path, zip_path


def build_repeated(n: int, out_dir: str) -> tuple[str, str]:
    """N images: the 258 shared originals (600x450 JPEG) repeated under distinct names, each repeat
    with its own lesion ids. Returns (csv, zip)."""
    labels = pd.read_csv(os.path.join(SHARED, "labels.csv"))
    rows = []
    zip_path = os.path.join(out_dir, f"images_{n}.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(n):
            row = labels.iloc[i % len(labels)]
            name = f"img{i:05d}_{row.image_id}.jpg"
            archive.write(os.path.join(SHARED, row.image_path), name)
            rows.append({"image_path": name, "label": row.dx, "lesion_id": f"{row.lesion_id}_{i // len(labels)}"})
    csv_path = os.path.join(out_dir, f"metadata_{n}.csv")
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path, zip_path


def measured(cmd: list[str], json_output: bool = True) -> tuple[dict, float, float]:
    """Run cmd; returns its JSON output (last line), wall seconds and peak RSS (GB) summed over it and
    its child processes, sampled every 50 ms."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    if proc.returncode:
        raise RuntimeError(err[-3000:])
    result = json.loads(out.strip().splitlines()[-1]) if json_output else {}
    return result, time.perf_counter() - started, peak[0] / 1e9


def test_predictions(out: str) -> tuple[pd.DataFrame, list[str]]:
    """A run's predictions.csv test rows (every row of a predict run, which has no split column), ordered by
    image (so two runs' rows line up), and its classes."""
    table = pd.read_csv(os.path.join(out, "predictions.csv"), dtype={"sample_id": str})
    classes = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
    rows = table[table["split"] == "test"] if "split" in table else table
    return rows.sort_values("image").reset_index(drop=True), classes


def paired_arms(arms: dict[str, pd.DataFrame], classes: list[str], groups, names: tuple[str, ...],
                n: int = 1000) -> tuple[dict, dict]:
    """Each arm's point metrics (``names``) and bootstrap samples over the SAME resamples of ``groups`` (the
    arms' rows must be the same images in the same order). Returns (points, samples) keyed by arm."""
    from image_learner.evaluation import metrics

    first = next(iter(arms.values()))["image"].tolist()
    assert all(part["image"].tolist() == first for part in arms.values()), "the arms' test rows differ"
    points, samples = {}, {}
    for name, part in arms.items():
        y, p = part["true_label"].astype(str).to_numpy(), part[[f"prob_{c}" for c in classes]].to_numpy()
        predicted = part["predicted_label"].astype(str).to_numpy()
        point = metrics.split_metrics(y, p, classes, predicted)
        points[name] = {k: point.get(k) for k in names}
        samples[name] = metrics.bootstrap_samples(y, p, classes, predicted, names, n, 42, groups)
    return points, samples


def paired_delta(points: dict, samples: dict, new: str, old: str, metric: str) -> dict:
    """new - old on ``metric``: the point difference and its 95% interval over the shared resamples."""
    from image_learner.evaluation import metrics

    return {"point": points[new][metric] - points[old][metric],
            "ci95": metrics.percentile_intervals({"d": samples[new][metric] - samples[old][metric]})["d"]}
