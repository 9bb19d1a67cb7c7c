"""From extracted images + metadata CSV to a labelled, grouped, split table (no training here).

Steps: resolve columns -> check labels -> match rows to images -> leakage-guard groups -> split.
Returns the table plus the facts the report needs (counts, groups found, straddling groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from image_learner.data import folds, image_health, task_choice
from image_learner.data.image_check import DEFAULT_MAX_BAD_FRACTION, check_images, unreadable_images_note
from image_learner.data.leakage_guard import DEFAULT_MAX_DISTANCE, check_max_distance, duplicate_groups
import split_utils
from image_learner.data.input_utils import (IMAGE_EXTENSIONS, InputError, label_text, listed, match_rows_to_images,
                         missing_value_like, read_metadata_csv, resolve_column)


@dataclass
class DataOptions:
    image_column: str = "image_path"
    target_column: str = "label"
    sample_id_column: str | None = None
    split_column: str | None = None  # None: use a column named "split" when the CSV has one …
    random_split: bool = False  # … unless this is set: split at random, any split column ignored
    split_probabilities: tuple[float, float, float] = split_utils.DEFAULT_PROBABILITIES
    random_seed: int = 42
    leakage_guard: bool = True
    leakage_max_distance: int = DEFAULT_MAX_DISTANCE
    positive_label: str | None = None
    max_bad_image_fraction: float = DEFAULT_MAX_BAD_FRACTION
    max_missing_fraction: float = 0.1  # CSV rows without an image; above this the run stops
    workers: int = 1  # processes that decode and hash the images
    cross_validation: int = 0  # K folds (K >= 2) instead of a train/validation/test split; 0: off
    # with cross_validation and no split column: the test rows of the seeded split held out of the folds
    hold_out_test: bool = False
    folds_optional: bool = False  # a preset's folds: a set too small for them falls back to one split
    task: str = "auto"  # task_choice.TASKS
    health: bool = True  # image-health scores (image_health.py) from the image check's decode
    drop_unhealthy: tuple[str, ...] = ()  # image_health.ISSUES removed before the split (--drop-unhealthy)
    # --subgroup-columns, resolved to CSV names (subgroups.resolve_columns): copied into the table as
    # subgroup_<name> for evaluation only; model_fit never passes them to Ludwig
    subgroup_columns: tuple[str, ...] = ()
    # --tabular-columns, resolved (tabular.resolve_columns): ((CSV column, "number"|"category"), ...), copied
    # into the table as tabular_<name> (raw text); model_fit encodes them per fit from its training rows
    tabular_columns: tuple[tuple[str, str], ...] = ()


@dataclass
class PreparedData:
    """One row per matched, readable image, with columns image, image_file, read_path (the file to
    train on: the original or a converted copy), label, sample_id, duplicate_group, group, split
    (0/1/2) and, with cross-validation, fold (1..K; 0 for held-out test rows, whose split is 2, while
    every fold row has split 0); plus what was found on the way."""

    table: pd.DataFrame
    classes: list[str]  # [] for regression (the label column then holds floats)
    task: str
    positive_label: str | None
    columns: dict
    dataset: dict
    split: dict
    leakage: dict
    warnings: list[str] = field(default_factory=list)
    task_reason: str = ""  # why this task (task_choice), for the log
    health: pd.DataFrame | None = None  # data_health.csv: one row per readable image (dropped ones too)
    health_summary: dict | None = None  # run_summary.json's data_health
    tabular: dict = field(default_factory=dict)  # --tabular-columns: CSV column -> kind (tabular.py)


def prepare(csv_path: str, image_root: str, image_files: list[str], options: DataOptions,
            converted_dir: str | None = None, resize_to: int | None = None,
            skipped_files: list[str] = ()) -> PreparedData:
    """Read, match, check, group and split; every user mistake raises InputError naming what is wrong.

    Converted copies of odd images (EXIF-rotated, CMYK, 16-bit, …) go to ``converted_dir``, resized to
    ``resize_to`` pixels square when given (the model's input size). ``skipped_files``: the ZIP's
    members that were not extracted because they are not images.
    """
    split_utils.validate_probabilities(options.split_probabilities)
    check_max_distance(options.leakage_max_distance)
    raw = read_metadata_csv(csv_path)
    image_col = resolve_column(raw, options.image_column, "image", "--image-column")
    label_col = resolve_column(raw, options.target_column, "label", "--target-column")
    sample_col = (resolve_column(raw, options.sample_id_column, "sample id", "--sample-id-column")
                  if options.sample_id_column else None)
    split_col, split_found_by_name, split_ignored = _find_split_column(raw, options)
    if label_col == image_col:
        raise InputError(f"the label column and the image column are both {label_col!r}: the CSV needs a separate "
                         f"label column (its columns are: {', '.join(repr(c) for c in raw.columns)})")
    warnings: list[str] = []

    raw = raw.assign(**{label_col: label_text(raw[label_col], label_col).to_numpy()})

    match = match_rows_to_images(raw, image_col, image_files)
    if match.n_images == 0:
        others = sorted(set(image_files) | set(skipped_files))
        raise InputError("the image ZIP holds no image files (" + ", ".join(IMAGE_EXTENSIONS) + ")"
                         + (f"; it has {len(others)} other files such as {listed(others[:3])}"
                            if others else "; it is empty"))
    if match.table.empty:
        raise InputError(
            f"no CSV row matched an image in the ZIP (column {image_col!r}). CSV paths look like "
            f"{listed(raw[image_col].head(3))}; the ZIP holds {match.n_images} images such as "
            f"{listed(sorted(image_files)[:3]) or 'none'}"
        )
    if len(match.unmatched_rows) > options.max_missing_fraction * match.n_rows:
        raise InputError(
            f"{len(match.unmatched_rows)} of {match.n_rows} CSV rows have no image in the ZIP (CSV lines "
            f"{listed(match.unmatched_rows)}; e.g. "
            f"{listed(raw[image_col].iloc[[line - 2 for line in match.unmatched_rows[:3]]])})"
            f". Above {options.max_missing_fraction:.0%} this looks like the wrong ZIP or CSV; if the CSV "
            "deliberately lists more images than the ZIP holds, raise --max-missing-fraction"
        )
    if match.unmatched_rows:
        warnings.append(f"{len(match.unmatched_rows)} of {match.n_rows} CSV rows have no image in the ZIP "
                        f"and were left out (CSV lines {listed(match.unmatched_rows)})")
    if match.unused_images:
        warnings.append(f"{len(match.unused_images)} images in the ZIP have no CSV row and were not used "
                        f"({listed(match.unused_images)})")
    matched = _drop_repeated_rows(match.table, label_col, warnings)

    matched, image_notes = _check_images(matched, image_root, converted_dir or image_root + "_converted",
                                         options.max_bad_image_fraction, options.workers, resize_to,
                                         options.health)
    warnings += image_notes
    # Duplicates are always looked for, so a leak is reported even with the guard off; the guard
    # decides whether they are also kept together by the split.
    dup_groups = _duplicate_groups(matched, options)
    health = health_summary = None
    if options.health:
        matched, dup_groups, health, health_summary = _assess_health(matched, image_col, dup_groups, options,
                                                                     warnings)

    task, task_reason = task_choice.choose_task(matched[label_col], options.task, label_col, matched["csv_line"])
    positive = None
    if task == "regression":
        if options.positive_label:
            raise InputError(f"--positive-label is for binary tasks; label column {label_col!r} makes a regression")
        classes = []
        labels = task_choice.regression_targets(matched[label_col])
    else:
        classes = sorted(matched[label_col].unique())
        labels = matched[label_col].to_numpy()
        _check_classes(matched, label_col, classes, warnings)
    if task == "binary":
        positive = options.positive_label or classes[1]
        if positive not in classes:
            raise InputError(f"--positive-label {positive!r} is not one of the labels {classes}")

    table = pd.DataFrame({
        "image": matched[image_col].to_numpy(),
        "image_file": matched["image_file"].to_numpy(),
        "read_path": matched["read_path"].to_numpy(),
        "label": labels,
        "sample_id": (matched[sample_col].astype(str).str.strip().to_numpy() if sample_col else ""),
    })
    for column in options.subgroup_columns:  # evaluation only: model_fit never passes them to Ludwig
        table["subgroup_" + column] = matched[column].astype(str).str.strip().to_numpy()
    for column, _ in options.tabular_columns:  # model inputs: encoded per fit from its training rows (model_fit)
        table["tabular_" + column] = matched[column].astype(str).str.strip().to_numpy()
    table["duplicate_group"] = dup_groups
    sample_groups = None
    if sample_col:
        ids = table["sample_id"].to_numpy()
        # A missing sample id makes the row a group of its own.
        sample_groups = np.where(ids == "", [f"\x00row{i}" for i in range(len(ids))], ids)
    split_by = dup_groups if options.leakage_guard else np.arange(len(table))
    table["group"] = split_utils.union_groups(split_by, sample_groups)
    true_groups = split_utils.union_groups(dup_groups, sample_groups)

    split_info = {"seed": options.random_seed, "probabilities": list(options.split_probabilities),
                  "grouped_by": (["sample id: " + sample_col] if sample_col else [])
                  + (["leakage guard (flips/rotations/duplicates)"] if options.leakage_guard else []),
                  "column": split_col}
    regression = task == "regression"
    # What the split stratifies by: the class, or a regression target's quantile bin (per group).
    strata = split_utils.quantile_bins(table["label"], table["group"]) if regression else table["label"]
    table["stratum"] = np.asarray(strata)  # the folds' validation parts are carved by it too (cross_validation)
    codes = folds.fold_codes(table, matched, split_col, split_found_by_name, split_ignored, options, split_info,
                             regression, warnings) if options.cross_validation else None
    if codes is None and split_col:
        codes = split_utils.parse_split_column(matched[split_col], split_col, matched["csv_line"])
        present = set(codes.tolist())
        if present == {0}:
            raise InputError(f"split column {split_col!r} marks every row as train; mark some as test")
        split_info["method"] = f"user column {split_col!r}" + (
            " (used because of its name; --random-split ignores it)" if split_found_by_name else "")
        if 1 not in present:
            codes = split_utils.carve_validation(strata, codes, table["group"],
                                                 options.split_probabilities, options.random_seed)
            split_info["method"] += ", validation carved out of train (seeded, stratified, grouped)"
    elif codes is None:
        codes = split_utils.random_split(strata, table["group"], options.split_probabilities,
                                         options.random_seed)
        split_info["method"] = "random, stratified by " + (
            f"{len(set(strata))} quantile bin(s) of the target" if regression else "label") + ", seeded" + (
            f" (column {split_ignored!r} ignored: --random-split)" if split_ignored else "")
    table["split"] = codes

    where = table["split"] * (options.cross_validation + 1) + table.get("fold", 0)  # split and fold
    leakage = _leakage_facts(table, true_groups, options, where)
    if split_col and leakage["straddling_duplicates"]:
        warnings.append(_straddling_duplicates_warning(leakage["straddling_duplicates"], split_col))
    if leakage["straddling_groups"]:
        warnings.append(
            f"LEAKAGE: {leakage['straddling_groups']} group(s) of the same picture or sample "
            f"({leakage['straddling_rows']} rows) sit in more than one split; test numbers will be "
            "optimistic (memory, not skill). Examples: "
            + "; ".join(" = ".join(g) for g in leakage["straddling_examples"][:3])
        )
    if not (codes == 0).any():
        raise InputError("the split left no training rows")
    errors, split_notes = ([], []) if options.cross_validation else split_utils.check_split(
        table["label"], codes, table["group"], options.split_probabilities, split_col, regression)
    if errors:
        raise InputError(f"the random split (seed {options.random_seed}, shares "
                         f"{'/'.join(f'{p:g}' for p in options.split_probabilities)}) is unusable: "
                         + "; ".join(errors[:-1]) + ". " + errors[-1])
    warnings += split_notes

    dataset = {
        "csv_rows": match.n_rows, "images_in_zip": match.n_images, "non_image_files_skipped": len(skipped_files),
        "matched_rows": len(table),
        "unmatched_rows": len(match.unmatched_rows), "unmatched_csv_lines": match.unmatched_rows[:50],
        "unused_images": len(match.unused_images), "unused_image_examples": match.unused_images[:50],
        "split_counts": {name: int((table["split"] == k).sum()) for k, name in enumerate(split_utils.SPLIT_NAMES)},
        "class_counts": _class_counts(table, classes, options.cross_validation),
    }
    if regression:  # no classes: the target's spread per split instead
        dataset["class_counts"] = {name: {} for name in split_utils.SPLIT_NAMES}
        dataset["target_summary"] = {name: _summary_of(table.loc[table["split"] == k, "label"])
                                     for k, name in enumerate(split_utils.SPLIT_NAMES)}
    columns = {"image": image_col, "label": label_col, "sample_id": sample_col, "split": split_col}
    return PreparedData(table, classes, task, positive, columns, dataset, split_info, leakage, warnings, task_reason,
                        health, health_summary, dict(options.tabular_columns))


def _duplicate_groups(matched: pd.DataFrame, options: DataOptions) -> np.ndarray:
    hashes = np.stack(matched["hashes"].to_list())
    thumbs = np.stack(matched["thumbs"].to_list())
    return duplicate_groups(hashes, thumbs, options.leakage_max_distance)


def _assess_health(matched, image_col, dup_groups, options: DataOptions, warnings: list[str]):
    """Score every readable image's health; with --drop-unhealthy remove the named issues' images here,
    before the split, say so in a warning, and regroup the duplicates of what is left."""
    health = image_health.health_table(matched[image_col].astype(str), pd.DataFrame(matched["health"].to_list()),
                                       dup_groups)
    health.insert(1, "image_file", matched["image_file"].to_numpy())
    drop = image_health.rows_to_drop(health, options.drop_unhealthy)
    health["dropped"] = drop
    summary = image_health.summarise(health, options.drop_unhealthy, drop)
    if drop.all():
        raise InputError(f"--drop-unhealthy {','.join(options.drop_unhealthy)} would remove every image "
                         f"({len(drop)}); nothing would be left to train on")
    if drop.any():
        per_issue = {i: int((health[f"is_{i}"].to_numpy() & drop).sum()) for i in options.drop_unhealthy}
        warnings.append(f"--drop-unhealthy removed {int(drop.sum())} of {len(drop)} images before the split ("
                        + ", ".join(f"{i} {n}" for i, n in per_issue.items() if n) + "), e.g. "
                        + listed(health.loc[drop, "image"].head(5)) + "; all are listed in data_health.csv")
        summary["dropped_per_issue"] = per_issue
        matched = matched[~drop].reset_index(drop=True)
        dup_groups = _duplicate_groups(matched, options)
    return matched, dup_groups, health, summary


def _straddling_duplicates_warning(groups: list[dict], split_col: str) -> str:
    """The LEAKAGE line for duplicate groups across a user's split column (the guard cannot regroup it)."""
    shown = "; ".join(" = ".join(f"{image} ({split})" for image, split in zip(g["images"], g["splits"]))
                      for g in groups[:5])
    return (f"LEAKAGE: {len(groups)} group(s) of duplicate pictures straddle your split column {split_col!r} "
            f"(a given split is kept as is; the leakage guard cannot regroup it): {shown}"
            + (f"; {len(groups) - 5} more in the report" if len(groups) > 5 else ""))


def _check_classes(matched: pd.DataFrame, label_col: str, classes: list[str], warnings: list[str]) -> None:
    if len(classes) < 2:
        raise InputError(f"label column {label_col!r} has only one class ({classes[0]!r}) among the matched "
                         "rows; a classifier needs at least two")
    counts = matched[label_col].value_counts()
    for label in missing_value_like(classes):
        warnings.append(f"class {label!r} ({counts[label]} images) is spelled like a missing-value marker: it was "
                        "treated as a class of its own (labels are kept as written; only an empty cell is "
                        "missing). If those rows are unlabelled, remove them from the CSV")


def _summary_of(values: pd.Series) -> dict:
    values = values.astype(float)
    if values.empty:
        return {"n": 0}
    return {"n": int(len(values)), "mean": float(values.mean()), "std": float(values.std(ddof=0)),
            "min": float(values.min()), "median": float(values.median()), "max": float(values.max())}


def _class_counts(table: pd.DataFrame, classes, k: int) -> dict:
    """Images per class in each split, or with cross-validation in each fold (and the held-out test set)."""
    parts = ([(f"fold {f}", table["fold"] == f) for f in range(1, k + 1)]
             + [("test", table["split"] == 2)] if k else
             [(name, table["split"] == code) for code, name in enumerate(split_utils.SPLIT_NAMES)])
    return {name: table.loc[rows, "label"].value_counts().reindex(classes, fill_value=0).astype(int).to_dict()
            for name, rows in parts if not (k and name == "test" and not rows.any())}


def _drop_repeated_rows(matched: pd.DataFrame, label_col: str, warnings: list[str]) -> pd.DataFrame:
    """One row per image: repeats with the same label are dropped, different labels are an error."""
    labels_per_file = matched.groupby("image_file")[label_col].nunique()
    conflicting = labels_per_file[labels_per_file > 1].index
    if len(conflicting):
        rows = matched[matched["image_file"] == conflicting[0]]
        raise InputError(f"image {conflicting[0]!r} is listed on CSV lines {listed(rows['csv_line'])} with "
                         f"different labels ({listed(sorted(set(rows[label_col])))}); "
                         f"{len(conflicting)} image(s) have conflicting labels")
    repeated = matched["image_file"].duplicated()
    if repeated.any():
        warnings.append(f"{int(repeated.sum())} repeated CSV row(s) for an image already listed were dropped "
                        f"(CSV lines {listed(matched.loc[repeated, 'csv_line'])})")
    return matched[~repeated].reset_index(drop=True)


def _check_images(matched: pd.DataFrame, image_root: str, converted_dir: str, max_bad_fraction: float,
                  workers: int = 1, resize_to: int | None = None, health: bool = True):
    """Decode every image once: drop unreadable ones (stop above ``max_bad_fraction``), convert odd ones."""
    files = list(dict.fromkeys(matched["image_file"]))
    checked = check_images(image_root, files, converted_dir, workers, resize_to, health)  # training's copies
    unreadable = unreadable_images_note(checked.bad, len(files), max_bad_fraction)
    notes = [unreadable] if unreadable else []
    if checked.converted:
        kinds = sorted(set(checked.converted.values()))
        notes.append(f"{len(checked.converted)} image(s) converted for training ({'; '.join(kinds[:5])}), "
                     f"e.g. {listed(list(checked.converted)[:3])}")
    fingerprints = iter(zip(checked.hashes, checked.thumbs, checked.health))  # one per readable image, in order
    good = {f: (p, *next(fingerprints)) for f, p in zip(files, checked.paths) if p is not None}
    kept = matched[matched["image_file"].isin(good)].reset_index(drop=True)
    kept["read_path"] = [good[f][0] for f in kept["image_file"]]
    kept["hashes"] = [good[f][1] for f in kept["image_file"]]
    kept["thumbs"] = [good[f][2] for f in kept["image_file"]]
    kept["health"] = [good[f][3] for f in kept["image_file"]]
    return kept, notes


def _find_split_column(raw: pd.DataFrame, options: DataOptions):
    """(column to split by, found by its name?, a split column ignored because of --random-split)."""
    by_name = next((c for c in raw.columns if c.strip().lower() == "split"), None)
    if options.random_split:
        if options.split_column:
            raise InputError("--random-split and --split-column contradict each other: pass one of them")
        return None, False, by_name
    if options.split_column:
        return resolve_column(raw, options.split_column, "split", "--split-column"), False, None
    return by_name, by_name is not None, None


def _leakage_facts(table: pd.DataFrame, true_groups: np.ndarray, options: DataOptions, where) -> dict:
    sizes = table["duplicate_group"].value_counts()
    dup_ids = sizes[sizes > 1].index
    straddle = split_utils.find_straddling_groups(true_groups, where)
    images = table["image"].astype(str).to_numpy()
    examples = table[table["duplicate_group"].isin(dup_ids)].groupby("duplicate_group")["image"].apply(list)
    return {
        "guard": options.leakage_guard,
        "max_distance": options.leakage_max_distance,
        "duplicate_groups": int(len(dup_ids)),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "duplicate_examples": [list(map(str, g)) for g in examples.head(20)],
        "groups": int(table["group"].nunique()),
        "straddling_groups": straddle.n_groups,
        "straddling_rows": straddle.n_rows,
        "straddling_examples": [[images[i] for i in rows] for rows in straddle.examples],
        "straddling_duplicates": _straddling_duplicates(table, where),
    }


def _straddling_duplicates(table: pd.DataFrame, where) -> list[dict]:
    """Every duplicate group (same picture, not merely same sample) whose images sit in more than one
    split (or fold): its images and their splits, for the report's gallery and the LEAKAGE line."""
    split_names = np.asarray(split_utils.SPLIT_NAMES)[table["split"].to_numpy()]
    if "fold" in table:
        split_names = np.where(table["fold"].to_numpy() > 0, [f"fold {f}" for f in table["fold"]], split_names)
    frame = pd.DataFrame({"group": table["duplicate_group"].to_numpy(), "where": np.asarray(where),
                          "image": table["image"].astype(str).to_numpy(), "split": split_names})
    spread = frame.groupby("group")["where"].nunique()
    return [{"group": int(g), "images": part["image"].tolist(), "splits": part["split"].tolist()}
            for g, part in frame[frame["group"].isin(spread[spread > 1].index)].groupby("group", sort=True)]
