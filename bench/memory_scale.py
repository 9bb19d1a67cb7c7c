#!/usr/bin/env python3
"""Memory at scale: peak RSS (the tool's process and its workers, summed) of a whole 1-epoch run at
224 px on N images, N = 1,400 and 10,000 (the 258 shared HAM10000 JPEGs repeated under distinct names).

tf_efficientnet_lite0 with the offline ImageNet weights (other models: random init, as no weights
can be downloaded here), batch 32, report included: the whole job a user runs, with the stage timings
the tool logs.

    python bench/memory_scale.py [--counts 1400 10000] [--size 224] [--model tf_efficientnet_lite0] \
        [--batch-size 32] [--work /tmp/memory_scale]
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, build_repeated, lite0_weights, measured  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1400, 10000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default="/tmp/memory_scale")
    args = parser.parse_args()
    weights = ["--pretrained-weights", lite0_weights()] if args.model == "tf_efficientnet_lite0" else [
        "--no-use-pretrained"]
    print(f"{args.model}, {args.size} px, batch {args.batch_size}")
    print("| images | wall s | peak RSS GB | stage seconds |\n|---|---|---|---|")
    for n in args.counts:
        os.makedirs(args.work, exist_ok=True)
        csv, zip_path = build_repeated(n, args.work)
        out = os.path.join(args.work, f"run_{n}")
        cmd = [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file", csv, "--image-zip", zip_path,
               "--output-dir", out, "--overwrite", "--model-name", args.model, *weights,
               "--image-size", str(args.size), "--epochs", "1", "--batch-size", str(args.batch_size),
               "--sample-id-column", "lesion_id"]
        _, wall, peak = measured(cmd, json_output=False)
        with open(os.path.join(out, "run_summary.json")) as handle:
            timings = json.load(handle)["timings_s"]
        stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
        print(f"| {n} | {wall:.0f} | {peak:.2f} | {stages} |", flush=True)
        shutil.rmtree(out)
        os.remove(zip_path)


if __name__ == "__main__":
    main()
