"""Train/validation/test split: seeded, stratified by label, with groups kept whole.

A *group* is a set of rows that must share a split: the same patient or lesion (``--sample-id-column``)
or the same picture up to a flip (the leakage guard). The core is pure: arrays in, split codes out.
Split codes follow Ludwig's fixed split: 0 = train, 1 = validation, 2 = test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from image_learner.errors import InputError, listed

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_PROBABILITIES = (0.7, 0.1, 0.2)
_SPLIT_SPELLINGS = {
    "0": 0, "train": 0, "training": 0,
    "1": 1, "validation": 1, "val": 1, "valid": 1, "validate": 1,
    "2": 2, "test": 2, "testing": 2,
}


def validate_probabilities(probabilities) -> tuple[float, float, float]:
    """Three non-negative numbers summing to 1, with a non-empty train part."""
    probs = tuple(float(p) for p in probabilities)
    if len(probs) != 3:
        raise InputError(f"split probabilities need three numbers (train validation test), got {len(probs)}")
    if any(not np.isfinite(p) or p < 0 for p in probs):
        raise InputError(f"split probabilities must be non-negative numbers, got {probs}")
    if abs(sum(probs) - 1.0) > 1e-6:
        raise InputError(f"split probabilities must sum to 1, got {probs} (sum {sum(probs):g})")
    if probs[0] == 0:
        raise InputError("the train probability must be above 0")
    return probs


def parse_split_column(values: pd.Series, column: str, csv_lines=None) -> np.ndarray:
    """Map 0/1/2 or train/validation/test (any case) to split codes; name the first bad row by its
    CSV line (``csv_lines``: the rows' lines in the file, as rows without an image were left out)."""
    codes = np.empty(len(values), dtype=np.int64)
    lines = range(2, len(values) + 2) if csv_lines is None else list(csv_lines)
    for i, (raw, line) in enumerate(zip(values, lines)):
        key = str(raw).strip().lower()
        if key.endswith(".0"):  # Excel turns 1 into 1.0
            key = key[:-2]
        if key not in _SPLIT_SPELLINGS:
            raise InputError(
                f"split column {column!r}, CSV line {line}: {raw!r} is not one of 0/1/2 or "
                "train/validation/test"
            )
        codes[i] = _SPLIT_SPELLINGS[key]
    return codes


def connected_groups(n: int, rows, cols) -> np.ndarray:
    """Group ids 0..G-1 (numbered by first appearance) of the graph on n rows with edges rows[k]-cols[k]."""
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (np.asarray(rows, dtype=np.int64),
                        np.asarray(cols, dtype=np.int64))), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    _, first_index, inverse = np.unique(component, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_index))  # component -> rank of its first row
    return order[inverse].astype(np.int64)


def union_groups(*group_arrays) -> np.ndarray:
    """Combine several groupings (any of them None) into one: rows sharing an id in *any* share one."""
    arrays = [np.asarray(a) for a in group_arrays if a is not None]
    n = len(arrays[0]) if arrays else 0
    rows, cols = [], []
    for arr in arrays:
        _, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
        rows.append(np.arange(n))
        cols.append(first[inverse])  # each row linked to the first row of its group
    if not arrays:
        return np.arange(n, dtype=np.int64)
    return connected_groups(n, np.concatenate(rows), np.concatenate(cols))


def _assign(labels: np.ndarray, groups: np.ndarray, probs, rng: np.random.Generator,
            n_splits: int) -> np.ndarray:
    """Assign whole groups to splits so every label's rows approach ``probs``.

    Per label stratum (a group counts for its most common label), groups go largest first (ties
    in seeded random order) to the split furthest below its target. With single-row groups this
    gives every split within one row of its target for every class. Splits equally far below their
    targets (e.g. train and test for the second of two equal groups) are told apart by the deficit
    relative to the target, then by the seeded generator: ties never all go to train.
    """
    out = np.full(len(labels), -1, dtype=np.int64)
    group_ids, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(group_ids))]
    group_label = []
    for rows in members:
        vals, counts = np.unique(labels[rows], return_counts=True)
        group_label.append(vals[np.argmax(counts)])
    group_label = np.array(group_label)
    for label in np.unique(group_label):
        stratum = np.flatnonzero(group_label == label)
        stratum = stratum[rng.permutation(len(stratum))]
        sizes = np.array([len(members[g]) for g in stratum])
        stratum = stratum[np.argsort(-sizes, kind="stable")]
        target = np.asarray(probs[:n_splits], dtype=float) * sizes.sum()
        filled = np.zeros(n_splits)
        for g in stratum:
            k = _furthest_below(target, filled, rng)
            filled[k] += len(members[g])
            out[members[g]] = k
    return out


def _furthest_below(target: np.ndarray, filled: np.ndarray, rng: np.random.Generator) -> int:
    """The split with the largest deficit (rows below target); ties (up to rounding) go to the largest
    deficit relative to the target share, remaining ties to a seeded draw."""
    deficit = target - filled
    tol = 1e-9 * max(1.0, float(target.sum()))
    tied = np.flatnonzero(deficit >= deficit.max() - tol)
    if len(tied) > 1:  # the largest deficit is positive while rows remain, so tied targets are > 0
        relative = deficit[tied] / target[tied]
        tied = tied[relative >= relative.max() - 1e-9]
    return int(tied[0] if len(tied) == 1 else tied[rng.integers(len(tied))])


def random_split(labels, groups=None, probabilities=DEFAULT_PROBABILITIES, seed: int = 42) -> np.ndarray:
    """Split codes (0/1/2) for each row: stratified by ``labels``, ``groups`` never straddle splits."""
    probs = validate_probabilities(probabilities)
    labels = np.asarray(labels).astype(str)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    return _assign(labels, groups, probs, rng, 3)


def quantile_bins(values, groups=None, n_bins: int = 5) -> np.ndarray:
    """Strata for a regression target: each group's median value, groups ranked by it and cut into up to
    ``n_bins`` bins of equal group counts (at least 10 groups a bin, so a 10% split can get one from each).

    Returned per row as text ``"q1"``.. so the classes' stratified, grouped assignment serves as is: every
    split gets low, middle and high values. Ties are ranked by group id, so the same input gives the same
    bins. Equal counts, not equal value ranges: a skewed target still fills every bin."""
    values = np.asarray(values, dtype=float)
    groups = np.arange(len(values)) if groups is None else np.asarray(groups)
    group_ids, inverse = np.unique(groups, return_inverse=True)
    medians = np.array([np.median(values[inverse == g]) for g in range(len(group_ids))])
    bins = max(1, min(n_bins, len(group_ids) // 10))
    rank = np.empty(len(group_ids), dtype=np.int64)
    rank[np.argsort(medians, kind="stable")] = np.arange(len(group_ids))
    group_bin = rank * bins // max(1, len(group_ids))
    return np.asarray([f"q{b + 1}" for b in group_bin[inverse]])


def carve_validation(labels, split_codes, groups=None, probabilities=DEFAULT_PROBABILITIES,
                     seed: int = 42) -> np.ndarray:
    """A user split with train and test only: move part of train to validation, groups kept whole.

    The validation share of train is p_val / (p_train + p_val) (0.1 / 0.8 by default).
    """
    probs = validate_probabilities(probabilities)
    codes = np.asarray(split_codes).copy()
    train = np.flatnonzero(codes == 0)
    if probs[1] == 0 or len(train) == 0:
        return codes
    labels = np.asarray(labels).astype(str)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    share = probs[1] / (probs[0] + probs[1])
    rng = np.random.default_rng(seed)
    sub = _assign(labels[train], groups[train], (1 - share, share), rng, 2)
    codes[train[sub == 1]] = 1
    return codes


def check_split(labels, codes, groups, probabilities, user_column: str | None = None,
                regression: bool = False) -> tuple[list[str], list[str]]:
    """Problems of a finished split, as (errors, warnings), each naming the rows per split.

    A random split must give validation and test rows (unless their share is 0) and every class
    training and test rows; otherwise the numbers reported would be missing or meaningless, so it is
    an error saying what to change. With the user's split column the user chose: the same facts
    are warnings. A class without validation rows is always a warning. A ``regression`` target has no
    classes: only empty splits count (its quantile strata are a means, not something to check).
    """
    probs = validate_probabilities(probabilities)
    if regression:
        labels = np.zeros(len(np.asarray(codes)), dtype=np.int64)
    labels, codes, groups = np.asarray(labels).astype(str), np.asarray(codes), np.asarray(groups)
    per_class = pd.crosstab(labels, codes).reindex(columns=range(3), fill_value=0)
    groups_per_class = pd.Series(groups).groupby(labels).nunique()

    def counts(values) -> str:
        return ", ".join(f"{name} {int(n)}" for name, n in zip(SPLIT_NAMES, values))

    def described(cls) -> str:
        n, g = int(per_class.loc[cls].sum()), int(groups_per_class[cls])
        return f"{cls!r} ({n} image(s) in {g} group(s): {counts(per_class.loc[cls])})"

    def named(classes) -> str:
        return listed(map(described, classes), sep="; ")

    totals = per_class.sum(axis=0).to_numpy()
    errors, warnings = [], []
    wanted = [1, 2] if user_column is None else [1]  # the user's column decides whether there is a test split
    for k in wanted:
        if totals[k] == 0 and probs[k] > 0:
            (errors if user_column is None else warnings).append(
                f"the {SPLIT_NAMES[k]} split is empty ({counts(totals)} images)"
                + ("" if user_column is None else f": add {SPLIT_NAMES[k]} rows to split column {user_column!r}"))
    if user_column is not None and totals[2] == 0:
        warnings.append(f"split column {user_column!r} has no test rows: the report can only show validation "
                        "numbers, which also chose the best epoch")
    if user_column is None and probs[2] == 0:
        warnings.append("the test share is 0: there is no test split, so the report can only show validation "
                        "numbers, which also chose the best epoch")
    no_train = [c for c in per_class.index if per_class.loc[c, 0] == 0]
    no_test = [c for c in per_class.index if per_class.loc[c, 2] == 0 and totals[2] > 0 and c not in no_train]
    no_validation = [c for c in per_class.index if per_class.loc[c, 1] == 0 and totals[1] > 0]
    if user_column is None and (no_train or no_test):
        errors.append("class(es) without training or test images: " + named(no_train + no_test))
    elif user_column is not None:
        if no_train:
            warnings.append(f"class(es) {named(no_train)} have no training rows: the model "
                            "cannot predict them")
        if no_test:
            warnings.append(f"class(es) {named(no_test)} have no test rows: the report has no "
                            "test numbers for them")
    if no_validation:
        warnings.append(f"class(es) {named(no_validation)} have no validation rows: the kept "
                        "epoch is chosen without them")
    if errors:
        errors.append(
            "Groups are kept whole (an image with its flipped or rotated copies, and all images sharing a "
            f"--sample-id-column id): {len(set(groups.tolist()))} group(s) for {len(labels)} images are too few "
            "or too large for these shares. Change one of: add images or use smaller groups; "
            + ("" if regression else "remove the rows of a rare class; ")
            + "other --split-probabilities (a 0 share for validation or test is accepted and means "
            "no such split); or give your own split with --split-column")
    return errors, warnings


@dataclass
class StraddleReport:
    """Groups whose rows sit in more than one split (only possible with a user split column)."""

    n_groups: int
    n_rows: int
    examples: list[list[int]]  # row indices of a few straddling groups


def find_straddling_groups(groups, split_codes, max_examples: int = 10) -> StraddleReport:
    frame = pd.DataFrame({"group": np.asarray(groups), "split": np.asarray(split_codes)})
    n_splits = frame.groupby("group")["split"].nunique()
    bad = n_splits[n_splits > 1].index
    rows = frame[frame["group"].isin(bad)]
    examples = [list(map(int, idx)) for _, idx in rows.groupby("group").groups.items()][:max_examples]
    return StraddleReport(n_groups=len(bad), n_rows=len(rows), examples=examples)


def assign_folds(labels, groups=None, k: int = 5, seed: int = 42) -> np.ndarray:
    """Cross-validation folds 1..k for each row: stratified by ``labels``, ``groups`` never straddle folds.

    The split's own machinery with k equal shares: per label stratum whole groups go, largest first, to
    the fold furthest below its share, so every class's rows spread over the folds as evenly as the
    group sizes allow. Refused (InputError naming --cross-validation) when k is below 2, when a class
    has fewer than k groups, or when a fold would lack a class (then a fold's model is never scored on it).
    """
    labels = np.asarray(labels).astype(str)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"--cross-validation needs at least 2 folds, got {k}")
    per_class = pd.Series(groups).groupby(labels).nunique()
    too_few = per_class[per_class < k]
    if len(too_few):
        counts = pd.Series(labels).value_counts()
        raise InputError(
            f"--cross-validation {k} needs at least {k} groups of every class, so that each fold holds every "
            "class; " + listed([f"{c!r} has {int(counts[c])} image(s) in {int(g)} group(s)"
                                for c, g in too_few.items()], sep="; ")
            + ". Groups are kept whole (an image with its flipped or rotated copies, and all images sharing a "
            "--sample-id-column id). Lower --cross-validation, add images of those classes, or remove their rows")
    folds = _assign(labels, groups, (1.0 / k,) * k, np.random.default_rng(seed), k) + 1
    missing = [(f, c) for f in range(1, k + 1) for c in per_class.index if not (labels[folds == f] == c).any()]
    if missing:
        raise InputError(
            f"--cross-validation {k}: with groups kept whole, "
            + listed([f"fold {f} has no {c!r} image" for f, c in missing], sep="; ")
            + " (those images sit in groups of mostly other labels). Lower --cross-validation or add images")
    return folds
