"""The demo (test-data/ham10000_demo_*, the run_demo.sh settings) in one process vs --distributed ddp with
2 gloo CPU processes on this machine: wall time and peak memory (sum of the RSS of the command and all its
children, sampled every 0.2 s).

    python bench/distributed_overhead.py WEIGHTS.safetensors [--workers 2]

WEIGHTS: EfficientNet-Lite0 ImageNet weights (python image_learner/training/offline_weights.py OUT.safetensors). Needs the
``distributed`` extra. Not a test: numbers go to BENCHMARKS.md by hand."""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "test-data")


def demo_command(weights, out, extra):
    return [sys.executable, os.path.join(ROOT, "image_learner_cli.py"),
            "--csv-file", os.path.join(DATA, "ham10000_demo_metadata.csv"),
            "--image-zip", os.path.join(DATA, "ham10000_demo_images.zip"), "--output-dir", out,
            "--sample-id-column", "lesion_id", "--model-name", "tf_efficientnet_lite0", "--pretrained-weights", weights,
            "--image-size", "96", "--epochs", "15", "--early-stop", "5", "--batch-size", "16",
            "--learning-rate", "0.001", "--augmentation", "random_horizontal_flip", "--random-seed", "42",
            "--no-report", *extra]


def measure(command, timeout_s=1800):
    started = time.time()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        if time.time() - started > timeout_s:
            process.kill()
            raise SystemExit(f"timed out: {command}")
        total = 0
        try:
            for proc in [process, *process.children(recursive=True)]:
                total += proc.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"exit {process.returncode}: {' '.join(command)}")
    return time.time() - started, peak / 2**30


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("1 process", []),
                            (f"ddp, {args.workers} gloo processes",
                             ["--distributed", "ddp", "--num-workers", str(args.workers)])):
            wall, peak = measure(demo_command(os.path.abspath(args.weights), os.path.join(tmp, name[:3]), extra))
            print(f"{name}: {wall:.1f} s wall, peak RSS {peak:.2f} GiB ({os.cpu_count()} CPUs)", flush=True)


if __name__ == "__main__":
    main()
