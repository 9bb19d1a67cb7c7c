"""The report's "Data health" section: counts per issue (data_health.csv, run_summary.json), the worst
flagged images of each issue as thumbnails, and every duplicate group that straddles the splits (a
user's split column can carry them; a random split with the guard on cannot)."""

from __future__ import annotations

import os

import pandas as pd
from PIL import Image

from image_learner.data.image_health import CSV_NAME, DUPLICATE_ISSUES, ISSUE_WORDS, ISSUES
from image_learner.report.report_images import data_uri

PER_ISSUE = 6  # thumbnails per issue (the worst first)
MAX_STRADDLING_PICTURES = 12  # straddling groups shown with thumbnails; all are listed as text
SIDE = 96


def _thumb(images_dir: str | None, image_file) -> str | None:
    """A data URI of the image, or None when the images are gone (report rebuilt later) or unreadable."""
    if not images_dir or not isinstance(image_file, str):
        return None
    path = os.path.join(images_dir, image_file)
    try:
        with Image.open(path) as img:
            return data_uri(img, SIDE)
    except (OSError, ValueError):
        return None


def _worst(health: pd.DataFrame, issue: str) -> pd.DataFrame:
    """The flagged rows of ``issue``, most extreme first."""
    flagged = health[health[f"is_{issue}"].astype(bool)]
    if issue in DUPLICATE_ISSUES:  # whole groups, largest first
        return flagged.sort_values(["duplicate_group_size", "duplicate_group"], ascending=[False, True])
    z = flagged[f"z_{issue}"].abs() if issue == "odd_aspect_ratio" else -flagged[f"z_{issue}"]
    return flagged.assign(_order=z).sort_values("_order", ascending=False)


def _card(row, issue: str, images_dir: str | None) -> dict:
    if issue in DUPLICATE_ISSUES:
        note = f"group {int(row['duplicate_group'])} ({int(row['duplicate_group_size'])} images)"
    else:
        note = f"score {row[f'score_{issue}']:.3f}, z {row[f'z_{issue}']:.1f}"
    return {"image": str(row["image"]), "src": _thumb(images_dir, row.get("image_file")), "note": note,
            "split": str(row.get("split", "")), "dropped": bool(row.get("dropped", False))}


def health_section(output_dir: str, summary: dict, images_dir: str | None) -> dict | None:
    """Everything the template's Data health section shows; None when the run scored no health."""
    facts = summary.get("data_health")
    path = os.path.join(output_dir, CSV_NAME)
    if not facts or not os.path.exists(path):
        return None
    health = pd.read_csv(path, keep_default_na=False, dtype={"image": str, "image_file": str, "split": str})
    issues = []
    for issue in ISSUES:
        if f"is_{issue}" not in health:
            continue
        health[f"is_{issue}"] = health[f"is_{issue}"].astype(str).str.lower() == "true"
        worst = _worst(health, issue).head(PER_ISSUE)
        issues.append({"name": issue, "words": ISSUE_WORDS[issue], "count": int(health[f"is_{issue}"].sum()),
                       "cards": [_card(row, issue, images_dir) for _, row in worst.iterrows()]})
    if "dropped" in health:
        health["dropped"] = health["dropped"].astype(str).str.lower() == "true"
    return {"facts": facts, "issues": issues, "straddling": straddling_groups(summary, health, images_dir),
            "pictures_reason": None if images_dir and os.path.isdir(images_dir)
            else "the images are not available (report rebuilt from a finished run's files)"}


def straddling_groups(summary: dict, health: pd.DataFrame | None, images_dir: str | None) -> list[dict]:
    """Every duplicate group across splits, each image with its split; thumbnails for the first groups."""
    groups = (summary.get("leakage") or {}).get("straddling_duplicates") or []
    files = dict(zip(health["image"], health["image_file"])) if health is not None and "image_file" in health else {}
    out = []
    for k, group in enumerate(groups):
        pictures = k < MAX_STRADDLING_PICTURES
        out.append({"group": group["group"], "members": [
            {"image": image, "split": split, "src": _thumb(images_dir, files.get(image)) if pictures else None}
            for image, split in zip(group["images"], group["splits"])]})
    return out
