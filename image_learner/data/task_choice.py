"""Which task a label column makes: binary, multiclass or regression (pure; the log prints the reason).

``--task auto``: two distinct labels make a binary task; a column whose every value is a finite number
with more than REGRESSION_MIN_DISTINCT distinct values makes a regression (Ludwig's ``number`` output);
anything else is multiclass, so class codes such as 0/1/2 stay classes. Values are compared as numbers
(``55`` and ``55.0`` are one age). The labels arrive as text (input_utils.label_text: an empty cell is
already an error); ``NaN``, ``inf`` and missing-value markers are not numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from image_learner.data.input_utils import InputError, listed, missing_value_like

TASKS = ("auto", "binary", "multiclass", "regression")
REGRESSION_MIN_DISTINCT = 11  # more than 10 distinct numbers: a quantity, not class codes (as upstream)


def as_number(text: str) -> float | None:
    """The finite number a label spells, else None (``NaN``, ``inf``, ``1,5`` and words are not numbers)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def choose_task(labels, requested: str, column: str, csv_lines=None) -> tuple[str, str]:
    """(task, reason) for the label texts of the matched rows; InputError when ``requested`` cannot fit.

    ``csv_lines``: each row's line in the CSV, so that errors name the offending rows."""
    if requested not in TASKS:
        raise InputError(f"--task {requested!r} is not one of {', '.join(TASKS)}")
    labels = pd.Series(labels).astype(str).reset_index(drop=True)
    lines = pd.Series(range(2, len(labels) + 2) if csv_lines is None else list(csv_lines))
    numbers = labels.map(as_number)
    not_numeric = numbers.isna().to_numpy()
    distinct_numbers = int(numbers.dropna().nunique())
    classes = sorted(labels.unique())

    def offending(mask) -> str:
        values = sorted(set(labels[mask]))
        return f"{listed(map(repr, values))} (CSV lines {listed(lines[mask].tolist())})"

    if requested == "regression":
        numbers_only(labels, column, csv_lines, "--task regression")
        if distinct_numbers < 2:
            raise InputError(f"--task regression: label column {column!r} holds one value only "
                             f"({labels.iloc[0]!r}); there is nothing to predict")
        return "regression", f"--task regression ({distinct_numbers} distinct values in {column!r})"
    if requested == "binary":
        if len(classes) != 2:
            raise InputError(f"--task binary needs exactly two labels in column {column!r}, found {len(classes)}: "
                             f"{listed(map(repr, classes))}")
        return "binary", f"--task binary (labels {listed(map(repr, classes))})"
    if requested == "multiclass":
        if len(classes) < 3:
            hint = "; two labels make a binary task (--task binary or auto)" if len(classes) == 2 else ""
            raise InputError(f"--task multiclass needs at least three labels in column {column!r}, found "
                             f"{len(classes)}: {listed(map(repr, classes))}{hint}")
        return "multiclass", f"--task multiclass ({len(classes)} classes)"

    # auto
    if len(classes) == 2:
        return "binary", f"auto: column {column!r} has two labels ({listed(map(repr, classes))})"
    if len(classes) < 2:
        return "multiclass", f"auto: column {column!r} has one label"  # prepare() names the error
    markers = np.asarray([bool(missing_value_like([text])) for text in labels])
    if distinct_numbers >= REGRESSION_MIN_DISTINCT and not_numeric.any() and not (not_numeric & ~markers).any():
        # Numbers with a few "NA" cells: almost surely a quantity with missing values, never one class
        # per age plus a class "NA". Only an empty cell is missing (the label rule), so say what to do.
        raise InputError(f"label column {column!r} holds {distinct_numbers} distinct numbers, which would make a "
                         f"regression, but also missing-value markers {offending(not_numeric)}. Remove those "
                         "rows for a regression, or pass --task multiclass to train every value as a class")
    if not not_numeric.any() and distinct_numbers >= REGRESSION_MIN_DISTINCT:
        return "regression", (f"auto: column {column!r} is numeric with {distinct_numbers} distinct values "
                              f"(more than {REGRESSION_MIN_DISTINCT - 1}); --task multiclass would treat them "
                              "as classes")
    if not not_numeric.any():
        return "multiclass", (f"auto: column {column!r} is numeric but has only {distinct_numbers} distinct values "
                              f"(at most {REGRESSION_MIN_DISTINCT - 1}): treated as class codes; --task regression "
                              "would predict a number")
    return "multiclass", f"auto: column {column!r} has {len(classes)} labels"


def numbers_only(labels, column: str, csv_lines=None, why: str = "a regression") -> np.ndarray:
    """The label texts as floats; InputError naming the values and CSV lines that are not finite numbers."""
    labels = pd.Series(labels).astype(str).reset_index(drop=True)
    numbers = labels.map(as_number)
    bad = numbers.isna().to_numpy()
    if bad.any():
        lines = pd.Series(range(2, len(labels) + 2) if csv_lines is None else list(csv_lines))
        raise InputError(f"{why} needs a number in every row of label column {column!r}; {int(bad.sum())} row(s) "
                         f"hold something else: {listed(map(repr, sorted(set(labels[bad]))))} (CSV lines "
                         f"{listed(lines[bad].tolist())}). Remove those rows, or choose a classification task")
    return numbers.to_numpy(dtype=float)


def regression_targets(labels) -> np.ndarray:
    """The label texts of a regression task as floats (choose_task has checked them)."""
    return np.asarray([as_number(text) for text in labels], dtype=float)


def task_from_csv(csv_path: str, target_column, requested: str) -> tuple[str, str] | None:
    """(task, reason) that the label column makes over every row of the CSV, read before any image is
    unpacked, so that options that do not fit the task can be refused at once; None when the CSV cannot
    tell (its problem is then reported in its place, by dataset_prep, with the images' facts)."""
    from image_learner.data.input_utils import label_text, read_metadata_csv, resolve_column

    try:
        raw = read_metadata_csv(csv_path)
        column = resolve_column(raw, target_column, "label", "--target-column")
        task, reason = choose_task(label_text(raw[column], column), requested, column)
    except InputError:
        return None
    return task, reason + " in the CSV"
