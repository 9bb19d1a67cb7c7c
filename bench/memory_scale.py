#!/usr/bin/env python3
"""Memory at scale: peak RSS (the tool's process and its workers, summed) of a whole 1-epoch run at
224 px on N images, and the stage the peak falls in.

Sets: ``--source ham`` (default) takes the first N of the 7,347 real HAM10000 images at 200x150
(../shared/data/ham10000/ham10000_200x150) with their lesion ids; beyond 7,347 each further image is
a lightly jittered repeat (brightness +2 levels, JPEG quality 90: the leakage guard groups it with its
original, as it should). ``--source originals`` repeats the 258 600x450 originals under distinct names
(the earlier table).

tf_efficientnet_lite0 with the offline ImageNet weights (other models: random init, as no weights
can be downloaded here), batch 32, report included: the whole job a user runs, with the stage timings
the tool logs. RSS is sampled every 50 ms; the stage of the peak is read off the cumulative stage
timings of run_summary.json (approximate to the unlisted start-up seconds). ``--tool-root``: the
checkout whose CLI runs (before/after).

    python bench/memory_scale.py [--counts 1000 3000 7347] [--size 224] [--model tf_efficientnet_lite0] \
        [--batch-size 32] [--work /tmp/memory_scale] [--tool-root CHECKOUT] [--env NAME=VALUE ...] [--timeline]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, build_ham, build_repeated, lite0_weights  # noqa: E402


def run_sampled(cmd: list[str], env: dict | None = None, timeline: bool = False) -> tuple[float, float, float]:
    """Run cmd; (wall s, peak RSS GB summed over it and its children, seconds after start of the peak).
    ``timeline``: also print each line the tool logs with the RSS (GiB) of that moment and the peak so far."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if timeline else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if timeline else subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peak, at, now, done = [0], [0.0], [0], threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                now[0] = rss
                if rss > peak[0]:
                    peak[0], at[0] = rss, time.perf_counter() - started
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = ""
    if timeline:  # the tool's log and its errors, one stream, read as it comes (no pipe left to fill up)
        for line in proc.stdout:
            err = (err + line)[-3000:]
            print(f"  {time.perf_counter() - started:6.1f} s  RSS {now[0] / 2**30:.2f} GiB (peak so far "
                  f"{peak[0] / 2**30:.2f})  {line.rstrip()[:140]}", flush=True)
        proc.wait()
    else:
        _, err = proc.communicate()
    done.set()
    if proc.returncode:
        raise RuntimeError(err[-3000:])
    return time.perf_counter() - started, peak[0] / 1e9, at[0]


def stage_at(timings: dict, wall: float, second: float) -> str:
    """The stage running ``second`` seconds into the run (stages assumed back to back, ending at ``wall``)."""
    t = wall - sum(timings.values())  # start-up (imports, argument checks) before the first stage
    if second < t:
        return "start-up"
    for name, seconds in timings.items():
        t += seconds
        if second <= t:
            return name
    return "after the last stage"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 3000, 7347])
    parser.add_argument("--source", choices=("ham", "originals"), default="ham")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", default="/tmp/memory_scale")
    parser.add_argument("--tool-root", default=ROOT, help="checkout whose image_learner_cli.py runs (before/after)")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment for the tool's process (e.g. glibc's MALLOC_ARENA_MAX=2)")
    parser.add_argument("--timeline", action="store_true",
                        help="print every line the tool logs with the RSS of that moment (where the memory goes)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    weights = ["--pretrained-weights", lite0_weights()] if args.model == "tf_efficientnet_lite0" else [
        "--no-use-pretrained"]
    print(f"{args.model}, {args.size} px, batch {args.batch_size}, {args.source}, tool {args.tool_root}, env {env}")
    print("| images | wall s | peak RSS GB | peak during | load before/after | stage seconds |")
    print("|---|---|---|---|---|---|")
    for n in args.counts:
        os.makedirs(args.work, exist_ok=True)
        csv, zip_path = build_ham(n, args.work) if args.source == "ham" else build_repeated(n, args.work)
        out = os.path.join(args.work, f"run_{n}")
        cmd = [sys.executable, os.path.join(args.tool_root, "image_learner_cli.py"), "--csv-file", csv,
               "--image-zip", zip_path, "--output-dir", out, "--overwrite", "--model-name", args.model, *weights,
               "--image-size", str(args.size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--sample-id-column", "lesion_id"]
        load = os.getloadavg()[0]
        wall, peak, at = run_sampled(cmd, env, args.timeline)
        with open(os.path.join(out, "run_summary.json")) as handle:
            timings = json.load(handle)["timings_s"]
        timings = {k: v for k, v in timings.items() if isinstance(v, (int, float)) and k != "total"}
        stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
        print(f"| {n} | {wall:.0f} | {peak:.2f} | {stage_at(timings, wall, at)} ({at:.0f} s) | "
              f"{load:.1f}/{os.getloadavg()[0]:.1f} | {stages} |", flush=True)
        shutil.rmtree(out)
        os.remove(zip_path)


if __name__ == "__main__":
    main()
