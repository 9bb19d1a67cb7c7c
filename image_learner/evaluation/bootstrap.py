"""Cluster bootstrap: which rows are resampled together, and the resamples as row weights, in chunks (pure).

Images that share a sample id (``--sample-id-column``, e.g. a lesion) or a leakage-guard duplicate group
(flips, rotations, near-duplicates) are not independent: resampling them one by one treats two views of
one lesion as two pieces of evidence and gives intervals about 1/sqrt(2) too narrow when every lesion has
two images. So a resample draws *groups* with replacement (as many draws as there are groups) and scores
every row of each drawn group; the groups are the connected components of "same sample id or same
duplicate group". Without either column each row is its own group, and the draws are the earlier
row bootstrap's, value for value.

A resample is a vector of group multiplicities; a row's weight is its group's multiplicity, so metrics
become weighted sums over the rows (metrics.py, regression_metrics.py). Resamples are made ``chunk`` at
a time, bounded by ``MAX_CELLS`` rows x resamples per array, so memory does not grow with the number of
resamples: 100,000 rows take a few hundred MB, not n x 1000 float64 arrays several times over.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

import split_utils

N_RESAMPLES = 1000
MAX_CELLS = 1 << 21  # rows x resamples per weight array: 16 MB of float64


def cluster_ids(table: pd.DataFrame) -> np.ndarray:
    """Group id 0..G-1 per row (numbered by first appearance) of a predictions table: rows sharing a
    ``sample_id`` or a ``duplicate_group`` share a group, transitively. A missing or empty sample id
    links nothing; a table without both columns gives every row its own group."""
    arrays = []
    if "sample_id" in table.columns:
        ids = table["sample_id"]
        text = ids.astype(str).str.strip()
        missing = (ids.isna() | (text == "")).to_numpy()
        # a missing sample id makes the row a group of its own (as dataset_prep splits it)
        arrays.append(np.where(missing, [f"\x00row{i}" for i in range(len(ids))], ("id:" + text).to_numpy()))
    if "duplicate_group" in table.columns:
        arrays.append(table["duplicate_group"].astype(str).to_numpy())
    return split_utils.union_groups(*arrays) if arrays else np.arange(len(table), dtype=np.int64)


def basis(table: pd.DataFrame, groups: np.ndarray, n_resamples: int = N_RESAMPLES, level: float = 0.95) -> dict:
    """What an interval rests on, for metrics.json: resamples, level, rows, groups, and what grouped them."""
    grouped_by = []
    if "sample_id" in table.columns and (table["sample_id"].fillna("").astype(str).str.strip() != "").any():
        grouped_by.append("sample id")
    if "duplicate_group" in table.columns:
        grouped_by.append("duplicate group")
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    return {"method": "percentile bootstrap of groups" if n_groups < len(groups) else "percentile bootstrap of rows",
            "resamples": int(n_resamples), "level": float(level), "rows": int(len(groups)),
            "groups": n_groups, "grouped_by": grouped_by}


def describe(entry: dict | None, what: str = "test images") -> str:
    """One sentence on an interval's basis (``ci95_basis``), e.g. "95% intervals over 1,000 resamples
    of 140 groups of the 280 test images ...". Empty when there is none."""
    if not entry:
        return ""
    level, resamples = f"{100 * entry['level']:g}%", f"{entry['resamples']:,}"
    if entry["groups"] < entry["rows"]:
        by = " or ".join(entry["grouped_by"]) or "group"
        return (f"{level} intervals over {resamples} resamples of {entry['groups']:,} groups of the "
                f"{entry['rows']:,} {what} (images sharing a {by} are drawn together, all or none)")
    return f"{level} intervals over {resamples} resamples of the {entry['rows']:,} {what} (each its own group)"


def _dense(groups, n: int | None = None) -> tuple[np.ndarray, int]:
    """(group id per row as 0..G-1, G); None means each of the ``n`` rows is its own group."""
    if groups is None:
        return np.arange(n, dtype=np.int64), int(n)
    groups = np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # numbered by first appearance, so groups 0..n-1 stay as given
    return rank[inverse.reshape(-1)].astype(np.int64), len(first)


def chunk_size(n: int, n_resamples: int, max_cells: int = MAX_CELLS) -> int:
    """Resamples per chunk: at most ``max_cells`` rows x resamples, at least one resample."""
    return int(max(1, min(n_resamples, max_cells // max(n, 1))))


def group_draws(n_groups: int, n_resamples: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """The drawn group indices, (resamples in the chunk, n_groups) per chunk: one generator call per
    resample in order, so a seed gives the same draws whatever the chunk size (and, one row per group,
    the earlier row bootstrap's draws)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples if n_groups else 0, chunk):
        count = min(chunk, n_resamples - start)
        yield np.stack([rng.integers(0, n_groups, n_groups) for _ in range(count)])


def resample_weights(n: int, groups=None, n_resamples: int = N_RESAMPLES, seed: int = 42,
                     max_cells: int = MAX_CELLS) -> Iterator[np.ndarray]:
    """Per chunk of consecutive resamples, an (n, chunk) float array: how often each resample draws each
    row (its group's multiplicity). Float so BLAS does the products; exact for whole numbers below 2**53."""
    group_of_row, n_groups = _dense(groups, n)
    chunk = chunk_size(n, n_resamples, max_cells)
    for draws in group_draws(n_groups, n_resamples, seed, chunk):
        count = len(draws)
        offsets = (draws + np.arange(count)[:, None] * n_groups).ravel()
        multiplicity = np.bincount(offsets, minlength=count * n_groups).reshape(count, n_groups)
        yield multiplicity.T[group_of_row].astype(float)


def mean_samples(values, groups=None, n_resamples: int = N_RESAMPLES, seed: int = 42) -> np.ndarray:
    """The mean of ``values`` (e.g. 1.0 for a row whose prediction set covers its label) in each resample,
    groups drawn whole: the same resamples as every other interval of the run (same seed, same groups)."""
    values = np.asarray(values, dtype=float)
    parts = [values @ weights / weights.sum(axis=0)
             for weights in resample_weights(len(values), groups, n_resamples, seed)]
    return np.concatenate(parts) if parts else np.empty(0)


def resample_rows(n: int, groups=None, n_resamples: int = N_RESAMPLES, seed: int = 42) -> Iterator[np.ndarray]:
    """The slow, explicit form of the same resamples: per resample, the row indices of every drawn group
    concatenated in draw order (the reference the weighted computation is checked against)."""
    group_of_row, n_groups = _dense(groups, n)
    members = [np.flatnonzero(group_of_row == g) for g in range(n_groups)]
    for draws in group_draws(n_groups, n_resamples, seed, 1):
        yield np.concatenate([members[g] for g in draws[0]]) if n_groups else np.empty(0, dtype=np.int64)
