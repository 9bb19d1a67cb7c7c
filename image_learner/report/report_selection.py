"""The report's epoch selection: per epoch, the validation metric that picked the kept epoch, with the
validation size it was computed on, and a note when that validation split is too small to choose by.

Thresholds (a note below either): 30 validation images, 10 validation groups. A proportion (accuracy,
balanced accuracy, F1) measured on n images has a standard error up to 0.5 / sqrt(n): 0.09 at n = 30,
more below it, which is as large as the epoch-to-epoch changes the selection compares, so the kept epoch
is then mostly chance. Images of one group (a lesion, a patient, copies of one picture) are not
independent, so the evidence is nearer the number of groups: under 10, a few lesions decide the epoch.
"""

from __future__ import annotations

import math

import pandas as pd

MIN_VALIDATION_IMAGES = 30
MIN_VALIDATION_GROUPS = 10
# metrics that are proportions of images (their standard error is bounded by 0.5 / sqrt(n))
PROPORTIONS = ("accuracy", "balanced_accuracy", "macro_f1")


def epoch_rows(history: pd.DataFrame, selection: dict | None, best_epoch: int | None) -> list[dict]:
    """One row per epoch: epoch, train loss, validation loss, the selection metric, whether it is the kept
    epoch; none when the history lacks the selection metric (cross-validation's final model, old runs)."""
    column = (selection or {}).get("column")
    if history.empty or not column or column not in history:
        return []
    rows = []
    for _, row in history.iterrows():
        epoch = int(row["epoch"])
        rows.append({"epoch": epoch, "train_loss": _value(row, "train_loss"),
                     "validation_loss": _value(row, "validation_loss"), "value": _value(row, column),
                     "kept": epoch == best_epoch})
    return rows


def _value(row, column: str) -> float | None:
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def small_validation_note(selection: dict | None) -> str | None:
    """Why the kept epoch is close to a guess, when validation has fewer than MIN_VALIDATION_IMAGES images or
    MIN_VALIDATION_GROUPS groups; None otherwise (or when unknown)."""
    selection = selection or {}
    images, groups = selection.get("validation_images"), selection.get("validation_groups")
    if images is None:
        return None
    reasons = []
    if images < MIN_VALIDATION_IMAGES:
        reasons.append(f"{images} images (fewer than {MIN_VALIDATION_IMAGES})")
    if groups is not None and groups < MIN_VALIDATION_GROUPS:
        reasons.append(f"{groups} groups of related images (fewer than {MIN_VALIDATION_GROUPS})")
    if not reasons:
        return None
    metric = str(selection.get("metric") or "the metric").replace("_", " ")
    noise = ""
    if selection.get("metric") in PROPORTIONS and images > 0:
        noise = (f" On {images} images, validation {metric} has a standard error of up to "
                 f"{0.5 / math.sqrt(images):.2f}, as large as the changes between epochs it compares.")
    return ("The validation split that picked the kept epoch is small: " + " and ".join(reasons) + "." + noise
            + " The kept epoch is then mostly chance: give validation more images (the second value of "
              "--split-probabilities) or use --cross-validation.")
