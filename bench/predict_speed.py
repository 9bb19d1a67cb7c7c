#!/usr/bin/env python3
"""Predict's fixed cost and per-image cost against a plain loop (issue 22).

For each count N, a ZIP of N images (the demo images repeated under distinct names, stored uncompressed)
is predicted twice, each in a fresh process timed from outside (Python start to exit):
- the tool: ``image_learner_cli.py predict --model MODEL --image-zip ZIP --no-evaluate``;
- a plain loop: import torch + timm, build the same network (timm's, random weights: the same compute),
  unzip, decode, resize (bilinear, antialiased) to the model's size, normalise, run it in eval mode
  without gradients in batches of 32.
Fixed cost = the wall time at the smallest N; per-image cost = (wall at N - wall at the smallest N) /
(N - smallest N); the same in CPU seconds of the child process (user + system, all its threads: steadier
than wall time on a shared machine), and the load average before each run. Also prints the import time of
torch, timm and Ludwig (one process) and the tool's own ``timings_s`` from run_summary.json.

    python bench/predict_speed.py --counts 8 520 1500 [--model test-data/tiny_model.zip] [--tool-root CHECKOUT]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "test-data", "ham10000_demo_images.zip")


def make_zip(n: int, path: str) -> None:
    """N images: the demo ZIP's images repeated under distinct names, stored (no compression)."""
    with zipfile.ZipFile(DEMO) as src:
        names = [m for m in src.namelist() if m.lower().endswith((".jpg", ".png"))]
        data = [src.read(m) for m in names]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for k in range(n):
            out.writestr(f"images/img_{k:05d}.jpg", data[k % len(data)])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env=None, cpu: dict | None = None) -> float:
    """Wall seconds of ``cmd``; its CPU seconds (and the 1-minute load average before it) into ``cpu``."""
    load, before, started = os.getloadavg()[0], _children_cpu(), time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-3000:]}")
    if cpu is not None:
        cpu.update(cpu_s=round(_children_cpu() - before, 2), load=round(load, 1))
    return time.time() - started


def plain_loop(zip_path: str, model_name: str, size: int, classes: int, batch: int = 32) -> None:
    """The plain loop itself (run in its own process by main)."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=classes).eval()
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    with tempfile.TemporaryDirectory() as work:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(work)
            names = [os.path.join(work, m) for m in z.namelist() if not m.endswith("/")]
        outputs = []
        with torch.no_grad():
            for start in range(0, len(names), batch):
                arrays = []
                for path in names[start:start + batch]:
                    with Image.open(path) as img:
                        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    arrays.append(np.asarray(rgb))
                x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
                outputs.append(model((x - mean) / std).softmax(1))
    print(json.dumps({"images": sum(len(o) for o in outputs)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 520, 1500])
    parser.add_argument("--model", default=os.path.join(ROOT, "test-data", "tiny_model.zip"))
    parser.add_argument("--tool-root", default=ROOT, help="checkout whose image_learner_cli.py runs (before/after)")
    parser.add_argument("--plain", nargs=4, metavar=("ZIP", "MODEL", "SIZE", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.plain[0], args.plain[1], int(args.plain[2]), int(args.plain[3]))
        return
    with zipfile.ZipFile(args.model) as z:
        manifest = json.loads(z.read("model/image_learner.json"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    imports = timed([sys.executable, "-c", "import torch, timm, ludwig.api"], env)
    imports_torch_timm = timed([sys.executable, "-c", "import torch, timm"], env)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in args.counts:
            zip_path = os.path.join(work, f"{n}.zip")
            make_zip(n, zip_path)
            out = os.path.join(work, f"out{n}")
            tool_cpu, plain_cpu = {}, {}
            tool = timed([sys.executable, os.path.join(args.tool_root, "image_learner_cli.py"), "predict", "--model",
                          args.model, "--image-zip", zip_path, "--output-dir", out, "--no-evaluate"], env, tool_cpu)
            with open(os.path.join(out, "run_summary.json")) as handle:
                timings = json.load(handle)["timings_s"]
            plain = timed([sys.executable, os.path.abspath(__file__), "--plain", zip_path, manifest["model_name"],
                           str(manifest["image_size"]), str(len(manifest["classes"]))], env, plain_cpu)
            rows.append({"images": n, "tool_s": round(tool, 2), "plain_s": round(plain, 2),
                         "tool_cpu_s": tool_cpu["cpu_s"], "plain_cpu_s": plain_cpu["cpu_s"],
                         "load_before": [tool_cpu["load"], plain_cpu["load"]], "tool_timings": timings})
    base = rows[0]
    for row in rows[1:]:
        extra = row["images"] - base["images"]
        row["tool_per_image_ms"] = round(1000 * (row["tool_s"] - base["tool_s"]) / extra, 2)
        row["plain_per_image_ms"] = round(1000 * (row["plain_s"] - base["plain_s"]) / extra, 2)
        row["per_image_ratio"] = round(row["tool_per_image_ms"] / row["plain_per_image_ms"], 2)
        row["tool_cpu_per_image_ms"] = round(1000 * (row["tool_cpu_s"] - base["tool_cpu_s"]) / extra, 2)
        row["plain_cpu_per_image_ms"] = round(1000 * (row["plain_cpu_s"] - base["plain_cpu_s"]) / extra, 2)
        row["cpu_per_image_ratio"] = round(row["tool_cpu_per_image_ms"] / row["plain_cpu_per_image_ms"], 2)
    print(json.dumps({"tool_root": args.tool_root, "import_torch_timm_ludwig_s": round(imports, 2), "import_torch_timm_s": round(imports_torch_timm, 2),
                      "model": os.path.basename(args.model), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
