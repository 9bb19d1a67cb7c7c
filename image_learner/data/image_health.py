"""Image health: which images are dark, over-exposed, blurry, near-uniform, oddly shaped or sized, grey in
a colour set, or copies of another image, before any metric is read.

Why not call cleanvision: its Imagelab opens and decodes every file itself (``Image.open`` per path),
a second decode of every image after the image check (image_check.py) has decoded it once. So the raw
properties are computed from the image check's own decoded image (image_properties.py, called in the image
check's workers, which import that module alone: no pandas), following cleanvision 0.3.7's documented definitions
(cleanvision/issue_managers/image_property.py):

- dark: the 99th percentile of pixel brightness sqrt(0.241 R² + 0.691 G² + 0.068 B²) / 255;
- light (over-exposed): 1 - the 5th percentile of that brightness;
- low_information: 0.1 x the entropy (bits) of the image's histogram, capped at 1;
- blurry: *not* cleanvision's (std of Pillow's FIND_EDGES at 64 px): on dermoscopy that does not tell
  a blurred image from a sharp one (HAM10000, Gaussian blur of radius 3 px at 200x150: median score
  0.565 blurred, 0.569 sharp; bench/image_health.py), because at 64 px every lesion photo is smooth.
  Here: the standard deviation of the grey image's Laplacian (Pech-Pacheco et al. 2000) at most 128 px
  a side (about the model's input scale: blur below that scale the model never sees), divided by the
  brightness range (255 x the 99th percentile) so a dark image is not also blurry. Like cleanvision
  (whose histogram term serves this), a near-uniform image is low_information, not blurry;
- odd_aspect_ratio: min(w/h, h/w);
- odd_size: sqrt(w h), scored against the data set's Tukey fences (quartiles ± 3 IQR);
- grayscale: cleanvision checks the file's mode ("L"); images are converted to RGB here, so the score
  is the mean spread between the colour channels (max - min, 0-255) instead;
- exact duplicates: identical decoded pixels (cleanvision: md5 of the pixels); near duplicates: the
  leakage guard's groups (same picture up to a flip, rotation, resize or re-encoding).

Differences: brightness, entropy and colour spread are taken on a box-reduced copy of at most 128 px a
side (``image_properties.STATS_SIDE``), not the full image, to keep the cost within a quarter of the image check
(bench/image_health.py; BENCHMARKS.md).

Thresholds: cleanvision flags every image whose score is below a fixed constant. Here an image is
flagged only when its score is an outlier *of this data set* (modified z-score below -3.5: Iglewicz &
Hoaglin 1993, median and MAD, so the defects themselves barely move the yardstick; the MAD of the lower
half, as only low scores are defects; sharpness on the log scale) *and* it is past
cleanvision's fixed bound (the absolute sanity bound). A clean set then flags nothing however its
scores spread, and a set that is uniformly dark (say, all fluorescence images) is not all "dark".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from PIL import Image

from image_learner.errors import InputError

PROPERTY_ISSUES = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")
DUPLICATE_ISSUES = ("exact_duplicates", "near_duplicates")
ISSUES = PROPERTY_ISSUES + DUPLICATE_ISSUES
Z_CAP = 1000.0  # a MAD of 0 makes every other value infinitely far: written as ±1000
Z_LIMIT = 3.5  # modified z-score beyond which a score is an outlier of the data set (Iglewicz & Hoaglin)
# cleanvision 0.3.7's default thresholds (ImagePropertyIssueManager): a score below is an issue there;
# here the absolute sanity bound a data-set outlier must also pass.
ABSOLUTE_BOUNDS = {"dark": 0.32, "light": 0.05, "low_information": 0.3,
                   "odd_aspect_ratio": 0.35, "odd_size": 0.5,
                   # ours (see above): a Laplacian spread under 3% of the brightness range; HAM10000 at
                   # 128 px: median 5.8%, 1st percentile 2.8%, blurred (radius 4 px at 200x150) at most 1.5%
                   "blurry": 0.03}
GREY_SPREAD = 2.0  # mean channel spread (0-255 levels) below which an RGB image is grey (JPEG chroma noise ~1)
# odd_size: a size outside the Tukey fences must also differ from the median by at least this factor
# (a data set of identical sizes has IQR 0, and one 5% smaller image is not "odd").
SIZE_FACTOR = 2.0
ISSUE_WORDS = {"dark": "dark", "light": "over-exposed", "blurry": "blurry", "low_information":
               "low information (near-uniform)", "odd_aspect_ratio": "odd aspect ratio", "odd_size": "odd size",
               "grayscale": "grey in a colour set", "exact_duplicates": "exact duplicate (identical pixels)",
               "near_duplicates": "near duplicate (flip/rotation/re-encoding)"}


def raw_scores(props: pd.DataFrame) -> pd.DataFrame:
    """Per-image scores in [0, 1] (cleanvision's convention: lower is worse), from ``image_properties`` rows."""
    side = np.sqrt(props["width"].astype(float) * props["height"].astype(float))
    q1, q3 = np.percentile(side, [25, 75])
    low, high = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    gap = high - low
    size = 1 - np.clip(np.abs(side - (low + high) / 2) / (gap if gap > 0 else (low + high) / 2), 0, 1)
    return pd.DataFrame({
        "dark": props["brightness_p99"], "light": 1 - props["brightness_p5"],
        "blurry": props["sharpness"],
        "low_information": np.minimum(0.1 * props["entropy"], 1.0),
        "odd_aspect_ratio": np.minimum(props["width"] / props["height"], props["height"] / props["width"]),
        "odd_size": size if gap > 0 else np.where(size < 1, 0.0, 1.0),  # cleanvision: IQR 0 -> any other size
        "grayscale": props["colour_spread"] / 255.0,
    }, index=props.index).astype(float)


def modified_z(values, low_side: bool = False, reference=None) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score the outliers themselves hardly move. ``low_side``: the MAD
    of the values below the median only (the left half of a "double MAD"), for checks where only low
    values are bad: sharpness, brightness and entropy are skewed (a long upper tail of textured or
    bright images says nothing about how low a normal image goes). A MAD of 0 (most values equal)
    gives ±Z_CAP for any other value and 0 for the typical one. ``reference``: a mask of the values the
    median and MAD are taken from (default: all)."""
    values = np.asarray(values, dtype=float)
    base = values if reference is None or not np.any(reference) else values[np.asarray(reference)]
    centre = np.median(base)
    below = base[base <= centre] if low_side else base
    mad = 1.4826 * np.median(np.abs(below - centre))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values - centre) / mad if mad > 0 else np.where(values == centre, 0.0, np.sign(values - centre) * np.inf)
    return np.clip(np.nan_to_num(z, nan=0.0), -Z_CAP, Z_CAP)


def property_flags(scores: pd.DataFrame, props: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per property issue: a low outlier of the data set *and* past the absolute bound."""
    flags = pd.DataFrame(index=scores.index)
    for issue in PROPERTY_ISSUES:
        outlier = modified_z(scores[issue], low_side=True) < -Z_LIMIT
        if issue == "grayscale":
            bound = props["colour_spread"].to_numpy() < GREY_SPREAD
        elif issue == "odd_size":
            side = np.sqrt(props["width"].astype(float) * props["height"].astype(float)).to_numpy()
            off = np.abs(np.log(side / np.median(side))) >= math.log(SIZE_FACTOR)
            # the fences are the data set's own yardstick here (cleanvision: IQR-based); z of the score
            # is not needed on top
            outlier, bound = scores[issue].to_numpy() < ABSOLUTE_BOUNDS[issue], off
        elif issue == "odd_aspect_ratio":
            # relative to the set's typical shape: log aspect ratio, either way, and beyond the bound
            log_ratio = np.log(props["width"].astype(float) / props["height"].astype(float)).to_numpy()
            outlier = np.abs(modified_z(log_ratio)) > Z_LIMIT
            bound = scores[issue].to_numpy() < ABSOLUTE_BOUNDS[issue]
        elif issue == "blurry":  # sharpness varies by a factor: outliers on the log scale
            outlier = _z_used(issue, scores, props) < -Z_LIMIT
            bound = scores[issue].to_numpy() < ABSOLUTE_BOUNDS[issue]
        else:
            bound = scores[issue].to_numpy() < ABSOLUTE_BOUNDS[issue]
        flags[issue] = outlier & bound
    flags["blurry"] &= ~flags["low_information"]  # nothing to be sharp about in a uniform image
    return flags


def _z_used(issue: str, scores: pd.DataFrame, props: pd.DataFrame) -> np.ndarray:
    """The modified z-score the issue's threshold was applied to (data_health.csv's ``z_<issue>``)."""
    if issue == "blurry":  # a near-uniform image has no sharpness to compare: not part of the yardstick
        uniform = modified_z(scores["low_information"], low_side=True) < -Z_LIMIT
        uniform &= scores["low_information"].to_numpy() < ABSOLUTE_BOUNDS["low_information"]
        return modified_z(np.log(np.maximum(scores[issue], 1e-6)), low_side=True, reference=~uniform)
    if issue == "odd_aspect_ratio":
        return modified_z(np.log(props["width"].astype(float) / props["height"].astype(float)))
    return modified_z(scores[issue], low_side=True)


def duplicate_flags(digests, duplicate_groups) -> pd.DataFrame:
    """exact_duplicates: another image has identical pixels; near_duplicates: another image of the same
    leakage-guard group has different pixels (a flipped, rotated, resized or re-encoded copy)."""
    frame = pd.DataFrame({"digest": np.asarray(digests), "group": np.asarray(duplicate_groups)})
    exact = frame.groupby("digest")["digest"].transform("size").to_numpy() > 1
    distinct_in_group = frame.groupby("group")["digest"].transform("nunique").to_numpy()
    return pd.DataFrame({"exact_duplicates": exact, "near_duplicates": distinct_in_group > 1})


def health_table(images, props: pd.DataFrame, duplicate_groups) -> pd.DataFrame:
    """data_health.csv's rows: image, the raw properties, ``score_<issue>`` (lower is worse),
    ``z_<issue>`` (the modified z-score the threshold used), ``is_<issue>`` flags and ``issues``."""
    props = props.reset_index(drop=True)
    scores = raw_scores(props)
    flags = pd.concat([property_flags(scores, props),
                       duplicate_flags(props["pixel_digest"], duplicate_groups)], axis=1)
    table = pd.DataFrame({"image": list(images)})
    for column in ("width", "height", "brightness_p99", "brightness_p5", "entropy", "sharpness", "colour_spread"):
        table[column] = props[column]
    table["pixel_digest"] = props["pixel_digest"]
    table["duplicate_group"] = np.asarray(duplicate_groups)
    table["duplicate_group_size"] = table.groupby("duplicate_group")["image"].transform("size")
    for issue in PROPERTY_ISSUES:
        table[f"score_{issue}"] = scores[issue].round(4)
        table[f"z_{issue}"] = np.round(_z_used(issue, scores, props), 2)
    for issue in ISSUES:
        table[f"is_{issue}"] = flags[issue].to_numpy()
    table["issues"] = [",".join(i for i in ISSUES if row[i]) for _, row in flags.iterrows()]
    return table


def parse_drop_option(text: str | None) -> tuple[str, ...]:
    """``--drop-unhealthy`` (comma-separated issue names, or 'all') -> issue names; bad names: InputError."""
    if not text or text.strip().lower() in ("", "none"):
        return ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if [n.lower() for n in names] == ["all"]:
        return ISSUES
    unknown = [n for n in names if n not in ISSUES]
    if unknown:
        raise InputError(f"--drop-unhealthy: unknown issue name(s) {', '.join(map(repr, unknown))}; choose from "
                         + ", ".join(ISSUES) + " (comma-separated), 'all' or 'none'")
    return tuple(dict.fromkeys(names))


def rows_to_drop(table: pd.DataFrame, issues) -> np.ndarray:
    """Boolean mask of the rows ``--drop-unhealthy`` removes. For duplicates every copy but the first of
    its group (exact: of its identical-pixel set) goes; the picture itself stays once."""
    drop = np.zeros(len(table), dtype=bool)
    for issue in issues:
        flagged = table[f"is_{issue}"].to_numpy()
        if issue in DUPLICATE_ISSUES:
            first = ~table["duplicate_group"].duplicated().to_numpy()
            if issue == "exact_duplicates":
                first = ~pd.Series(table["pixel_digest"]).duplicated().to_numpy()
            flagged = flagged & ~first
        drop |= flagged
    return drop


def summarise(table: pd.DataFrame, dropped_issues=(), dropped=None) -> dict:
    """run_summary.json's ``data_health``: counts per issue, how thresholds work, what was dropped."""
    counts = {issue: int(table[f"is_{issue}"].sum()) for issue in ISSUES}
    return {
        "images_checked": int(len(table)), "counts": counts,
        "images_with_any_issue": int((table["issues"] != "").sum()),
        "threshold_rule": f"modified z-score < -{Z_LIMIT} within this data set and past cleanvision 0.3.7's "
                          "default bound (duplicates: the leakage guard's groups, identical pixels)",
        "absolute_bounds": dict(ABSOLUTE_BOUNDS, grayscale_spread_levels=GREY_SPREAD, odd_size_factor=SIZE_FACTOR),
        "drop_unhealthy": list(dropped_issues),
        "dropped": int(np.sum(dropped)) if dropped is not None else 0,
        "dropped_examples": (table.loc[np.asarray(dropped), "image"].astype(str).head(20).tolist()
                             if dropped is not None and np.any(dropped) else []),
    }


CSV_NAME = "data_health.csv"


def write_csv(health: pd.DataFrame, table: pd.DataFrame, path: str) -> None:
    """data_health.csv: the health rows with the split each image went to ("dropped" when
    --drop-unhealthy removed it), so a duplicate straddling splits can be read off the file."""
    from split_utils import SPLIT_NAMES

    split_of = dict(zip(table["image"].astype(str), np.asarray(SPLIT_NAMES)[table["split"].to_numpy()]))
    out = health.drop(columns=["pixel_digest"]).copy()
    out.insert(2, "split", [split_of.get(image, "dropped" if dropped else "")
                            for image, dropped in zip(out["image"].astype(str), out["dropped"])])
    out.to_csv(path, index=False)


def log_line(summary: dict) -> str:
    """One log line: how many images each issue flagged."""
    counts = ", ".join(f"{issue} {n}" for issue, n in summary["counts"].items() if n) or "no issue found"
    dropped = f"; {summary['dropped']} removed (--drop-unhealthy)" if summary["dropped"] else \
        "; nothing removed (flags only; --drop-unhealthy removes)"
    return (f"data health: {summary['images_with_any_issue']} of {summary['images_checked']} images flagged "
            f"({counts}){dropped}; see {CSV_NAME}")
