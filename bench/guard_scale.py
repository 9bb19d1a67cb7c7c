"""How long does duplicate grouping take at 10,000 - 100,000 images, and how much memory?

Synthetic fingerprints, shaped as the guard stores them: 8 random 256-bit hashes and a random 8x8 RGB
thumbnail per image; 2% of the images are planted copies of another image under a random flip/rotation
(identity hash = that symmetry's hash with 0-16 bits flipped, thumbnail = the same symmetry of the
original's, +-1 level of noise), and 1% are "blank" images (all-zero hash, random flat colours), the
skewed case where every such image lands in one bucket. The grouping (``duplicate_groups``: index,
colour check, connected components) is timed (wall and CPU) and its peak traced memory measured
(tracemalloc, which sees numpy's buffers). The old all-pairs code (chunked N x N distance rows) is timed
at 2,000 and 8,000 images and extrapolated as N². ``--faiss`` also times faiss-cpu's
IndexBinaryMultiHash (21 tables of 12 bits, radius search, queried with the 8 symmetric hashes of each
image, as first planned; search only, no colour check) at 10,000 - 40,000 images, when faiss-cpu is
installed (it is not a dependency of the tool).

Usage: python bench/guard_scale.py [--sizes 10000 50000 100000] [--old-sizes 2000 8000] [--faiss]
The old code's group count is too low: it merges the blank images (all-zero hash) into one group.
"""

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from image_learner.data.leakage_guard import (COLOUR_TOLERANCE, DEFAULT_MAX_DISTANCE, _distance_rows, duplicate_groups,  # noqa: E402
                           hash_pairs, min_distances, thumbnail_symmetry)
from split_utils import connected_groups  # noqa: E402


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(hashes N x 8 x 4, thumbnails N x 8 x 8 x 3, the number of groups the guard should find)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=(n, 8, 4), dtype=np.uint64, endpoint=False)
    thumbs = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    copies = rng.choice(n, size=n // 50 + n // 100, replace=False)
    planted, blank = copies[:n // 50], copies[n // 50:]
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=len(planted), replace=False)
    for b, a in zip(planted, originals):
        s = rng.integers(0, 8)
        hashes[b, 0] = hashes[a, s]
        for bit in rng.choice(256, rng.integers(0, 17), replace=False):
            hashes[b, 0, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        noise = rng.integers(-1, 2, size=(8, 8, 3))
        thumbs[b] = np.clip(thumbnail_symmetry(thumbs[a], s).astype(int) + noise, 0, 255)
    hashes[blank] = 0
    colours = rng.integers(0, 256, size=(len(blank), 3))
    thumbs[blank] = colours[:, None, None, :]  # flat, random colours
    # Blank images whose random colours happen to be within the tolerance are rightly grouped.
    close = np.abs(colours[:, None, :] - colours[None, :, :]).mean(axis=2) <= COLOUR_TOLERANCE
    blank_groups = len(np.unique(connected_groups(len(blank), *np.nonzero(close))))
    return hashes, thumbs, n - len(planted) - len(blank) + blank_groups


def old_all_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """The grouping as it was before the index: every pair's distance, in chunks of 64 rows."""
    rows, cols = [], []
    for start, block in _distance_rows(hashes):
        r, c = np.nonzero(block <= max_distance)
        rows.append(r + start)
        cols.append(c)
    return connected_groups(len(hashes), np.concatenate(rows), np.concatenate(cols))


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def traced_peak_mb(fn, *args) -> float:
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def faiss_seconds(n: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of faiss's index build + radius search."""
    import faiss

    hashes = synthetic(n)[0]
    index = faiss.IndexBinaryMultiHash(256, 21, 12)
    start, cpu = time.perf_counter(), time.process_time()
    index.add(np.ascontiguousarray(hashes[:, 0, :]).view(np.uint8))
    queries = np.ascontiguousarray(hashes.reshape(-1, 4)).view(np.uint8)
    for s in range(0, len(queries), 80_000):
        index.range_search(queries[s:s + 80_000], DEFAULT_MAX_DISTANCE + 1)  # faiss keeps distances < radius
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--old-sizes", type=int, nargs="+", default=[2_000, 8_000])
    parser.add_argument("--faiss", action="store_true")
    parser.add_argument("--faiss-sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; max distance {DEFAULT_MAX_DISTANCE}")
    print("| images | method | wall s | CPU s | peak traced MB | groups (expected) |")
    print("|---|---|---|---|---|---|")
    for n in args.old_sizes:
        hashes, thumbs, expected = synthetic(n)
        groups, wall, cpu = timed(old_all_pairs, hashes, DEFAULT_MAX_DISTANCE)
        # The index must find exactly the pairs the all-pairs matrix finds (before the colour check).
        i, j = hash_pairs(hashes, DEFAULT_MAX_DISTANCE)
        dist = min_distances(hashes)
        close = np.triu(np.minimum(dist, dist.T) <= DEFAULT_MAX_DISTANCE, 1)
        assert set(zip(i.tolist(), j.tolist())) == set(zip(*map(np.ndarray.tolist, np.nonzero(close))))
        print(f"| {n:,} | old: all pairs (hash only) | {wall:.1f} | {cpu:.1f} | - | "
              f"{len(np.unique(groups)):,} ({expected:,}) |")
    old_n, old_cpu = n, cpu
    for n in args.sizes:
        hashes, thumbs, expected = synthetic(n)
        groups, wall, cpu = timed(duplicate_groups, hashes, thumbs)
        peak = traced_peak_mb(duplicate_groups, hashes, thumbs)
        print(f"| {n:,} | index + colour check | {wall:.1f} | {cpu:.1f} | {peak:.0f} | "
              f"{len(np.unique(groups)):,} ({expected:,}) |")
        print(f"| {n:,} | old: all pairs, extrapolated from {old_n:,} as N² | - | "
              f"{old_cpu * (n / old_n) ** 2:.0f} | - | - |")
    if args.faiss:
        for n in args.faiss_sizes:
            wall, cpu = faiss_seconds(n)
            print(f"| {n:,} | faiss IndexBinaryMultiHash(256, 21, 12), 8 queries per image, search only | "
                  f"{wall:.1f} | {cpu:.1f} | - | - |")


if __name__ == "__main__":
    main()
