"""Same seed, same numbers, even on a busy machine? Trains the bundled demo twice with the same seed (the
end-to-end test's tiny run: test_efficientnet, random init, 32 px, 2 epochs, random horizontal flips), each
pair while ``--hogs`` busy-loop processes compete for the CPUs, and compares the predicted probabilities.

    python bench/determinism_under_load.py --pairs 3 --hogs 3

Prints one line per pair (identical or not, max |difference|) and a summary line. With ``--batcher`` it
instead drives Ludwig's own RandomAccessBatcher as its trainer does (made, then set_epoch(0) after the
trainer's set-up work, here a sleep of 0-20 ms), with Ludwig's random_horizontal_flip and the prefetch_size
the image feature is given (None: Ludwig's default, 4 in lazy mode; 0: this tool's setting with
augmentations), and counts how many of ``--pairs`` repeats flip a different sequence of batches than the
first. Seconds instead of minutes, and it needs no load to show the race.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "test-data")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "2",
        "--batch-size", "16", "--preprocessing-workers", "1", "--sample-id-column", "lesion_id"]


def train(out: str, timeout: int) -> np.ndarray:
    """One training run of the CLI in a subprocess; its predicted probabilities."""
    subprocess.run([sys.executable, os.path.join(ROOT, "image_learner_cli.py"),
                    "--csv-file", os.path.join(DEMO, "ham10000_demo_metadata.csv"),
                    "--image-zip", os.path.join(DEMO, "ham10000_demo_images.zip"),
                    "--output-dir", out, *TINY], check=True, capture_output=True, timeout=timeout)
    return pd.read_csv(os.path.join(out, "predictions.csv")).filter(like="prob_").to_numpy()


def start_hogs(count: int, seconds: int) -> list[subprocess.Popen]:
    """Busy-loop processes that end by themselves after ``seconds`` (and are killed by the caller)."""
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]


def flip_sequence(prefetch_size: int, setup_seconds: float, seed: int = 42) -> list[bool]:
    """Which of 2 epochs' batches Ludwig's batcher flips, seeded as the trainer seeds torch."""
    import torch
    from ludwig.data.batcher.random_access import RandomAccessBatcher
    from ludwig.data.sampler import DistributedSampler
    from ludwig.features.image_feature import RandomHFlip

    class Images:  # a lazy column's stand-in: each batch takes ~2 ms to "decode"
        features = {"image": None}

        def get(self, _name, indices):
            time.sleep(0.002)
            return np.broadcast_to(np.arange(4, dtype=np.float32), (len(indices), 1, 1, 4)).copy()

    torch.manual_seed(seed)
    batcher = RandomAccessBatcher(Images(), DistributedSampler(160, shuffle=True, random_seed=seed),
                                  batch_size=16, ignore_last=True, prefetch_size=prefetch_size,
                                  augmentation_pipeline={"image": RandomHFlip(None)})
    time.sleep(setup_seconds)  # the trainer's work between initialize_batcher and set_epoch(0)
    flips = []
    for epoch in range(2):
        batcher.set_epoch(epoch, 16)
        while not batcher.last_batch():
            flips.append(bool(torch.as_tensor(batcher.next_batch()["image"])[0, 0, 0, 0] == 3))
    return flips


def batcher_race(pairs: int) -> None:
    """--batcher: the race in Ludwig's batcher itself, with and without prefetching."""
    for prefetch in (4, 0):
        first = flip_sequence(prefetch, 0.0)
        differing = sum(flip_sequence(prefetch, 0.02 * k / max(1, pairs - 1)) != first for k in range(pairs))
        print(f"prefetch_size {prefetch}: {differing}/{pairs} repeats flipped a different sequence of the "
              f"{len(first)} batches than the first", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=400, help="seconds per training run")
    parser.add_argument("--batcher", action="store_true", help="only Ludwig's batcher (seconds, no load)")
    args = parser.parse_args()
    if args.batcher:
        batcher_race(args.pairs)
        return
    differing, worst = 0, 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(args.pairs):
            hogs = start_hogs(args.hogs, 2 * args.timeout)
            start = time.time()
            try:
                first = train(os.path.join(scratch, f"{pair}a"), args.timeout)
                second = train(os.path.join(scratch, f"{pair}b"), args.timeout)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            diff = float(np.abs(first - second).max())
            changed = int((first != second).any(axis=1).sum())
            differing += diff > 0
            worst = max(worst, diff)
            print(f"pair {pair}: {changed}/{len(first)} rows differ, max |prob diff| {diff:.6f} "
                  f"({time.time() - start:.0f} s, {args.hogs} hogs)", flush=True)
    print(f"{differing}/{args.pairs} pairs differed; max |prob diff| {worst:.6f}")


if __name__ == "__main__":
    main()
