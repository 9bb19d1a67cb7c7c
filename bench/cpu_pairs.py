#!/usr/bin/env python3
"""The tool's training against the raw timm loop in alternated rounds of fresh processes (issue 22, CPU).

One fresh process runs the raw loop at this machine's speed of the moment; the next may run 6-10% faster or
slower (BENCHMARKS.md), as much as the gap measured. So the two are compared in rounds, each a raw child and a
tool child of bench/gpu_ablation.py (``--child raw`` / ``--child ours``, the tool's allocator in both), back to
back, the order alternating (raw first in odd rounds, the tool first in even ones: a drift of the machine over
the run then favours neither). The estimate is the per-round ratio (tool images/s ÷ raw images/s, each the median
of the epochs after the first): its median, its geometric mean with a 95% bootstrap interval (rounds
resampled), and the ratio of the two medians. Also the same per CPU second, peak RSS and the tool's last
validation loss (equal in every round: the same seed).

    OMP_NUM_THREADS=2 python bench/cpu_pairs.py [--model tf_efficientnet_lite0] [--size 224] [--images 256]
        [--epochs 4] [--rounds 8] [--table SET/table.csv] [--json out.json]

Without ``--table`` the set is prepared as gpu_ablation.py does (the shared HAM10000 originals, resized by the
tool's image check) in a temporary folder. ``--smoke``: test_efficientnet at 32 px, 2 rounds (proves the script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from gpu_ablation import prepare, run_child  # noqa: E402


def summarise(rounds: list[dict], seed: int = 0, resamples: int = 10_000) -> dict:
    """Per-round ratios and their summaries (pure: tests and reruns call it on stored rounds)."""
    ratios = [r["ours"]["images_per_s"] / r["raw"]["images_per_s"] for r in rounds]
    cpu_ratios = [r["ours"]["images_per_cpu_s"] / r["raw"]["images_per_cpu_s"] for r in rounds]
    rng = random.Random(seed)
    means = sorted(statistics.geometric_mean(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    raw = [r["raw"]["images_per_s"] for r in rounds]
    ours = [r["ours"]["images_per_s"] for r in rounds]
    return {"ratios": ratios, "cpu_ratios": cpu_ratios, "median_ratio": statistics.median(ratios),
            "geometric_mean_ratio": statistics.geometric_mean(ratios),
            "interval_95": (means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]),
            "median_cpu_ratio": statistics.median(cpu_ratios),
            "raw_median": statistics.median(raw), "ours_median": statistics.median(ours),
            "ratio_of_medians": statistics.median(ours) / statistics.median(raw)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=256, help="training images per epoch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads in both children")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per child")
    p.add_argument("--table", help="a table of gpu_ablation.py's prepare (default: prepared here)")
    p.add_argument("--json", help="write the rounds and the summary here too")
    p.add_argument("--smoke", action="store_true", help="test_efficientnet, 32 px, 48 images, 2 rounds")
    a = p.parse_args()
    if a.smoke:
        a.model, a.size, a.images, a.batch, a.epochs, a.rounds = "test_efficientnet", 32, 48, 8, 3, 2
    with tempfile.TemporaryDirectory() as folder:
        table = a.table or prepare(a, folder)
        rounds, started = [], time.time()
        for k in range(1, a.rounds + 1):
            order = ("raw", "ours") if k % 2 else ("ours", "raw")
            result = {}
            for variant in order:
                load = os.getloadavg()[0]
                result[variant] = run_child(variant, table, a, "float32")
                result[variant]["load_before"] = load
            rounds.append(result)
            raw, ours = result["raw"], result["ours"]
            print(f"[{time.time() - started:6.0f} s] round {k} ({' then '.join(order)}): raw {raw['images_per_s']:.2f}, "
                  f"tool {ours['images_per_s']:.2f} images/s -> {ours['images_per_s'] / raw['images_per_s']:.3f}; "
                  f"peak RSS raw {raw['peak_gib']:.2f}, tool {ours['peak_gib']:.2f} GiB; tool's validation loss "
                  f"{ours['validation'].get('validation_loss', float('nan')):.6f}", flush=True)
    s = summarise(rounds)
    print(f"\n{a.model} {a.size} px, batch {a.batch}, {a.images} images, {a.epochs} epochs, {a.rounds} alternated rounds\n"
          f"per-round tool / raw: {', '.join(f'{x:.3f}' for x in s['ratios'])}\n"
          f"median {s['median_ratio']:.3f}; geometric mean {s['geometric_mean_ratio']:.3f} (95% bootstrap interval "
          f"{s['interval_95'][0]:.3f}-{s['interval_95'][1]:.3f}, rounds resampled); medians raw {s['raw_median']:.2f}, "
          f"tool {s['ours_median']:.2f} images/s (ratio {s['ratio_of_medians']:.3f}); per CPU second: median "
          f"{s['median_cpu_ratio']:.3f}")
    if a.json:
        with open(a.json, "w") as handle:
            json.dump({"rounds": rounds, "summary": s, "args": vars(a)}, handle, indent=1)


if __name__ == "__main__":
    main()
