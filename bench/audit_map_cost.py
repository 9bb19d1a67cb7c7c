#!/usr/bin/env python3
"""The data audit's cost at 7,347 images (issue 24): the encoder features of every image and the report's
map (t-SNE of at most embeddings.MAP_CAP points), each timed alone in its own process on a saved model.

    python bench/audit_map_cost.py build WORK            # CSV + ZIP of ../shared/data/ham10000/ham10000_200x150
    image-learner --csv-file WORK/metadata.csv --image-zip WORK/images.zip --output-dir WORK/run ...  (the model)
    /usr/bin/time -v python bench/audit_map_cost.py features WORK/run   # -> WORK/run/embeddings_bench.csv
    /usr/bin/time -v python bench/audit_map_cost.py map WORK/run

Each step prints one JSON line: wall and CPU seconds of the step alone (not the imports or the model's
loading), the process's peak resident memory (ru_maxrss) before and after the step.
"""

import json
import os
import resource
import sys
import time
import zipfile

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
HAM = os.path.join(ROOT, "..", "shared", "data", "ham10000", "ham10000_200x150")


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build(work: str) -> None:
    """metadata.csv (image_path, label, lesion_id) and images.zip (stored) of every HAM10000 image."""
    os.makedirs(work, exist_ok=True)
    meta = pd.read_csv(os.path.join(HAM, "metadata.csv"))
    names = meta["image_path"].map(os.path.basename)
    with zipfile.ZipFile(os.path.join(work, "images.zip"), "w", zipfile.ZIP_STORED) as archive:
        for path, name in zip(meta["image_path"], names):
            archive.write(os.path.join(HAM, path), name)
    pd.DataFrame({"image_path": names, "label": meta["dx"], "lesion_id": meta["lesion_id"]}).to_csv(
        os.path.join(work, "metadata.csv"), index=False)
    print(json.dumps({"images": len(meta)}))


def features(run: str) -> None:
    """The audit stage's feature pass (embeddings.encoder_features) over every image of the run."""
    from image_learner.evaluation import embeddings
    from image_learner.model import model_archive
    from image_learner.training import ludwig_trainer

    summary = json.load(open(os.path.join(run, "run_summary.json")))
    predictions = pd.read_csv(os.path.join(run, "predictions.csv"), keep_default_na=False, dtype={"image": str})
    paths = [os.path.join(HAM, "images", name) for name in predictions["image"]]
    with model_archive.offline_hub():
        model = ludwig_trainer.load_model(os.path.join(run, "model"), "the run's model")
    before, cpu, started = _peak_mb(), _cpu(), time.perf_counter()
    found = embeddings.encoder_features(model, paths, summary["model"]["image_size"],
                                        summary["training"]["batch_size"])
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    table = embeddings.embeddings_table(predictions["image"], predictions["split"],
                                        predictions["true_label"].astype(str), found)
    table.to_csv(os.path.join(run, "embeddings_bench.csv"), index=False)
    print(json.dumps({"step": "features", "images": len(paths), "width": int(found.shape[1]),
                      "image_size": summary["model"]["image_size"], "wall_s": round(wall, 1),
                      "cpu_s": round(cpu, 1), "peak_rss_mb_before": before, "peak_rss_mb_after": _peak_mb(),
                      "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}))


def project_map(run: str) -> None:
    """The report's map (report_audit.data_map: sample, t-SNE, plotly figure) from the run's files."""
    from image_learner.report import report_audit

    name = "embeddings_bench.csv" if os.path.exists(os.path.join(run, "embeddings_bench.csv")) else "embeddings.csv"
    table = report_audit._read(run, name)
    issues = report_audit._read(run, "label_issues.csv")
    health = report_audit._read(run, "data_health.csv")
    before, cpu, started = _peak_mb(), _cpu(), time.perf_counter()
    html, facts = report_audit.data_map(table, issues, 42, health)
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    print(json.dumps({"step": "map", "rows": len(table), **facts, "html_mb": round(len(html) / 1e6, 2),
                      "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb_before": before,
                      "peak_rss_mb_after": _peak_mb()}))


if __name__ == "__main__":
    {"build": build, "features": features, "map": project_map}[sys.argv[1]](sys.argv[2])
