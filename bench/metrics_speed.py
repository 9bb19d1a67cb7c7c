#!/usr/bin/env python3
"""Bootstrap intervals: the earlier per-resample scikit-learn loop against metrics.bootstrap_ci (all
resamples at once), 1,000 resamples of synthetic test sets of 50 / 500 / 2,000 rows, 7 classes and
binary (thresholded at 0.3). Prints wall-clock and CPU seconds (all threads; steadier than wall time on a
shared machine) for each, and the largest difference between their interval ends (the same seed draws the
same resamples in both).

    python bench/metrics_speed.py [--rows 50 500 2000] [--resamples 1000] [--repeats 3]
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.evaluation import metrics  # noqa: E402


def old_bootstrap_ci(y_true, proba, classes, y_pred, metric_names=metrics.HEADLINE, n_resamples=1000, seed=42,
                     level=0.95):
    """The implementation before the vectorised one, as it was (metrics.py at fe28612)."""
    y_true, proba, classes, y_pred = metrics._prepare(y_true, proba, classes, y_pred)
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in metric_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_resamples):
            rows = rng.integers(0, len(y_true), len(y_true))
            t, p, pr = y_true[rows], y_pred[rows], proba[rows]
            present = sorted(set(t))
            fns = {
                "accuracy": lambda: skm.accuracy_score(t, p),
                "balanced_accuracy": lambda: skm.balanced_accuracy_score(t, p),
                "macro_f1": lambda: skm.f1_score(t, p, labels=present, average="macro", zero_division=0),
                "roc_auc_macro": lambda: metrics.roc_auc(t, pr, classes, "macro"),
            }
            for name in metric_names:
                value = fns[name]()
                if value is not None:
                    samples[name].append(float(value))
    tail = (1.0 - level) / 2 * 100
    return {name: ([float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if len(v) >= 10 else None)
            for name, v in samples.items()}


def synthetic(n, k, seed=0):
    """n rows of k classes with informative but noisy probabilities (rounded: tied scores occur)."""
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[truth]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = proba.round(3)
    proba /= proba.sum(axis=1, keepdims=True)
    pred = np.where(proba[:, 1] >= 0.3, 1, 0) if k == 2 else proba.argmax(axis=1)
    return np.asarray(classes)[truth], proba, classes, np.asarray(classes)[pred]


def best_of(repeats, fn):
    """(wall s, CPU s) of the fastest of ``repeats`` runs, and the result."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50, 500, 2000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="new implementation: best of this many runs")
    args = parser.parse_args()
    print(f"{'classes':>7} {'rows':>6} {'before wall/CPU s':>18} {'after wall/CPU s':>17} {'speed-up (CPU)':>15} "
          f"{'max |interval diff|':>20}")
    for k in (7, 2):
        for n in args.rows:
            data = synthetic(n, k)
            before, old = best_of(1, lambda: old_bootstrap_ci(*data, n_resamples=args.resamples))
            after, new = best_of(args.repeats, lambda: metrics.bootstrap_ci(*data, n_resamples=args.resamples))
            diff = max(abs(a - b) for name in old for a, b in zip(old[name] or [], new[name] or []))
            assert all((old[name] is None) == (new[name] is None) for name in old)
            print(f"{k:>7} {n:>6} {before[0]:>10.2f}/{before[1]:<7.2f} {after[0]:>9.3f}/{after[1]:<7.3f} "
                  f"{before[1] / after[1]:>14.0f}x {diff:>20.1e}", flush=True)


if __name__ == "__main__":
    main()
