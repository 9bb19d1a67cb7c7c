"""The cross-validation split (``--cross-validation K``): fold codes 1..K for the rows that form the folds,
stratified and grouped like the split; held-out test rows (a split column's, or with ``--hold-out-test`` the
seeded random split's) outside them. Part of dataset_prep.prepare.
"""

from __future__ import annotations

import numpy as np

import split_utils
from image_learner.data.input_utils import InputError


def fold_codes(table, matched, split_col, split_found_by_name, split_ignored, options, split_info, regression,
               warnings: list[str]) -> np.ndarray | None:
    """Split codes (0 for the fold rows, 2 for held-out test rows) with the ``fold`` column set on ``table``; or
    None where a preset's folds do not fit the set (a class with fewer groups than folds, a fold without a
    class): then the caller makes one split instead, with a warning here. Folds the user typed that do not
    fit stop the run (InputError)."""
    try:
        return _fold_split(table, matched, split_col, split_found_by_name, split_ignored, options, split_info,
                           regression)
    except InputError as err:
        if not options.folds_optional:
            raise
        warnings.append(f"the preset's {options.cross_validation}-fold cross-validation does not fit this set "
                        f"({err}): one train/validation/test split instead")
        return None  # _fold_split sets the fold column and split_info["folds"] last: neither is set


def _fold_split(table, matched, split_col, split_found_by_name, split_ignored, options, split_info,
                regression: bool = False) -> np.ndarray:
    """Split codes (0 for the fold rows, 2 for the held-out test rows: a split column's, or with
    ``hold_out_test`` those of the seeded random split, so the same rows one split would test on) and the
    ``fold`` column of ``table`` (1..K, 0 for held-out rows); describes the split in ``split_info``."""
    k = options.cross_validation
    codes = np.zeros(len(table), dtype=np.int64)
    split_info["method"] = (f"{k}-fold cross-validation, stratified by "
                            + ("quantile bins of the target" if regression else "label") + ", seeded")
    if split_col:
        user = split_utils.parse_split_column(matched[split_col], split_col, matched["csv_line"])
        codes[user == 2] = 2
        split_info["method"] += (f"; the test rows of split column {split_col!r} held out as the test set, its "
                                 "train and validation rows form the folds"
                                 + (" (column used because of its name; --random-split ignores it)"
                                    if split_found_by_name else ""))
    elif options.hold_out_test and options.split_probabilities[2] > 0:
        held_out = split_utils.random_split(table["stratum"], table["group"], options.split_probabilities,
                                            options.random_seed) == 2
        codes[held_out] = 2
        split_info["method"] += (f"; the test rows of the seeded random split ({options.split_probabilities[2]:g} "
                                 "of the images, stratified, grouped) held out as the test set, the rest form the "
                                 "folds")
    if split_ignored:  # set only without a split column
        split_info["method"] += f" (column {split_ignored!r} ignored: --random-split)"
    in_folds = codes == 0
    if not in_folds.any():
        raise InputError(f"split column {split_col!r} marks every row as test: nothing is left for the folds")
    folds = np.zeros(len(table), dtype=np.int64)
    folds[in_folds] = split_utils.assign_folds(table["stratum"].to_numpy()[in_folds],
                                               table["group"].to_numpy()[in_folds], k, options.random_seed)
    table["fold"] = folds
    split_info["folds"] = k
    return codes
