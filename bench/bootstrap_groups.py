#!/usr/bin/env python3
"""Group bootstrap (bootstrap.py) against the earlier row bootstrap.

    python bench/bootstrap_groups.py widths RUN/predictions.csv [--split test|cross_validation]
    python bench/bootstrap_groups.py memory [--rows 100000] [--task classification|regression]

``widths``: the 95% interval widths of a fixed predictions table, drawn by row (before) and by group
(after: the ``sample_id`` and ``duplicate_group`` columns), and the same with every row listed twice
(the row bootstrap narrows by about 1/sqrt(2), the group bootstrap does not move). ``memory``: peak
traced memory (tracemalloc) and wall time of 1,000 resamples of synthetic rows in pairs (7 classes, or
numbers with the median baseline). For the earlier code's peak, copy this script into the bench/ folder
of a checkout of it (before bootstrap.py: ``metrics.bootstrap_ci`` has no ``groups``, rows are drawn).
"""

import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.evaluation import metrics  # noqa: E402
from image_learner.evaluation import regression_metrics  # noqa: E402


def _classes(path: str, table: pd.DataFrame) -> list[str]:
    summary = os.path.join(os.path.dirname(path), "run_summary.json")
    if os.path.exists(summary):  # a binary run's [negative, positive] order
        with open(summary) as handle:
            return json.load(handle)["classes"]
    return [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]


def _widths(table: pd.DataFrame, classes, groups) -> dict:
    args = (table["true_label"], table[[f"prob_{c}" for c in classes]].to_numpy(), classes, table["predicted_label"])
    return {name: None if ci is None else round(ci[1] - ci[0], 3)
            for name, ci in metrics.bootstrap_ci(*args, seed=42, groups=groups).items()}


def widths(path: str, split: str) -> None:
    from image_learner.evaluation import bootstrap  # here, so that ``memory`` also runs on the earlier code (no bootstrap.py)

    table = pd.read_csv(path)
    table = table[table["split"] == split].reset_index(drop=True)
    classes = _classes(path, table)
    twice = pd.concat([table, table], ignore_index=True)
    groups = bootstrap.cluster_ids(table)
    print(f"{path}, split {split}: {len(table)} images in {groups.max() + 1} groups; 95% interval widths")
    print("  before (rows)              ", _widths(table, classes, None))
    print("  after (groups)             ", _widths(table, classes, groups))
    print("  listed twice, rows         ", _widths(twice, classes, None))
    print("  listed twice, groups       ", _widths(twice, classes, bootstrap.cluster_ids(twice)))


def memory(rows: int, task: str) -> None:
    rng = np.random.default_rng(0)
    groups = np.arange(rows) // 2
    grouped = "groups" in metrics.bootstrap_ci.__code__.co_varnames  # False on the earlier code
    tracemalloc.start()
    started = time.time()
    if task == "classification":
        classes = list("abcdefg")
        y, p = rng.choice(classes, rows), rng.dirichlet(np.ones(7), rows)
        tracemalloc.reset_peak()
        metrics.bootstrap_ci(y, p, classes, **({"groups": groups} if grouped else {}))
    else:
        true = rng.uniform(20, 80, rows)
        pred = true + rng.normal(0, 10, rows)
        tracemalloc.reset_peak()
        regression_metrics.bootstrap_ci(true, pred, 50.0, **({"groups": groups} if grouped else {}))
    peak = tracemalloc.get_traced_memory()[1]
    print(f"{task}, {rows} rows, {'groups' if grouped else 'rows (earlier code)'}: peak {peak / 2 ** 20:.0f} MiB, "
          f"{time.time() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("widths")
    w.add_argument("predictions")
    w.add_argument("--split", default="test")
    m = sub.add_parser("memory")
    m.add_argument("--rows", type=int, default=100_000)
    m.add_argument("--task", choices=("classification", "regression"), default="classification")
    args = parser.parse_args()
    if args.command == "widths":
        widths(args.predictions, args.split)
    else:
        memory(args.rows, args.task)


if __name__ == "__main__":
    main()
