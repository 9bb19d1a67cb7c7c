"""Exact Hamming-radius search between two sets of bit strings, without comparing all pairs.

Multi-index hashing (Norouzi et al., 2012): split the bits into ``m`` disjoint chunks. Two strings
within distance ``r`` differ in at most ``r // m`` bits of some chunk (pigeonhole), so with
``m = r // 2 + 1`` chunks some chunk differs in at most one bit. For each chunk, the indexed strings
are counted into a dense table of chunk values; each query probes its own chunk value and the ``b``
values one bit away, and only strings found that way are compared in full. Every pair within ``r`` is
found (the tests check this against brute force); the work grows with the number of candidates, not
with N². Candidates are produced in batches, so memory stays bounded however skewed the data are.

faiss-cpu's ``IndexBinaryMultiHash`` implements the same idea, but measured with the leakage guard's
shape (100,000 images, 8 symmetric hashes each) it was too slow and too large: see
bench/guard_scale.py and BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

MAX_CHUNK_BITS = 22  # dense count table of 2**22 int32 (16 MB); sparser buckets give nothing more
BATCH_CANDIDATES = 1 << 20  # candidate pairs expanded and compared at once (~150 MB of temporaries)


def chunk_plan(max_distance: int, n_bits: int) -> tuple[int, int]:
    """(number of chunks, bits per chunk) for an exact search up to ``max_distance``."""
    chunks = max_distance // 2 + 1
    bits = min(MAX_CHUNK_BITS, n_bits // chunks)
    if bits < 1:
        raise ValueError(f"a Hamming radius of {max_distance} cannot be indexed in {n_bits} bits")
    return chunks, bits


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for int arrays by sorting (numpy's hash-based np.unique was 20x slower on these)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _chunk(words: np.ndarray, start: int, bits: int) -> np.ndarray:
    """Bits ``start .. start+bits-1`` of each row of a uint64 (N, W) array, as int64."""
    word, offset = divmod(start, 64)
    value = words[:, word] >> np.uint64(offset)
    if offset + bits > 64:
        value |= words[:, word + 1] << np.uint64(64 - offset)
    return (value & np.uint64((1 << bits) - 1)).astype(np.int64)


def _popcount_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int32)


def _batches(counts: np.ndarray, limit: int):
    """Consecutive slices of rows whose ``counts`` add up to at most ``limit`` (or one row if it alone is more)."""
    total = np.cumsum(counts)
    start = 0
    while start < len(counts):
        before = total[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(total, before + limit, side="right")))
        yield slice(start, end)
        start = end


def radius_pairs(database: np.ndarray, queries: np.ndarray, max_distance: int,
                 batch: int = BATCH_CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, database row) pairs within Hamming distance ``max_distance``, each pair once.

    ``database`` and ``queries`` are uint64 arrays of shape (N, W) and (Q, W), W words per string.
    """
    database = np.ascontiguousarray(database, dtype=np.uint64)
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    chunks, bits = chunk_plan(max_distance, 64 * database.shape[1])
    probes = np.array([0] + [1 << k for k in range(bits)], dtype=np.int64)
    found = np.empty(0, np.int64)  # close pairs as query * len(database) + database row
    for c in range(chunks):
        keys = _chunk(database, c * bits, bits)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << bits)
        starts = np.cumsum(counts) - counts
        del keys
        query_keys = _chunk(queries, c * bits, bits)
        parts = [found]
        for probe in probes:
            probed = query_keys ^ probe
            per_query = counts[probed]
            hit = np.flatnonzero(per_query)
            for part in _batches(per_query[hit], batch):
                rows = hit[part]
                n = per_query[rows]
                q = np.repeat(rows, n)
                # database positions: starts[key] + 0..n-1 for each query row's run of candidates
                first = np.repeat(starts[probed[rows]] - np.cumsum(n) + n, n)
                d = order[first + np.arange(len(q))]
                close = _popcount_rows(queries[q], database[d]) <= max_distance
                parts.append(q[close] * len(database) + d[close])
        found = sorted_unique(np.concatenate(parts))  # a close pair is usually found again in other chunks
    return found // len(database), found % len(database)
