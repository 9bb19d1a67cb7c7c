"""The report's "Data audit" section: a gallery of the suspected label errors (label_issues.csv) and a 2-D
map of the images' features (embeddings.csv), coloured by class, suspects marked. Both read the run's
files, so a rebuilt report shows them too (the gallery only while the images are available)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from image_learner.data import image_health
from image_learner.evaluation import embeddings
from image_learner.report import report_images, report_plots

MAX_SUSPECTS = 16
DUPLICATE_ISSUES = set(image_health.DUPLICATE_ISSUES)  # data_health.csv's issue names for copies


def _read(output_dir: str, name: str) -> pd.DataFrame | None:
    path = os.path.join(output_dir, name)
    return pd.read_csv(path, keep_default_na=False, dtype={"given_label": str, "predicted_label": str,
                                                           "label": str, "split": str, "image": str}) \
        if os.path.isfile(path) else None


def suspects_gallery(issues: pd.DataFrame | None, predictions: pd.DataFrame, images_dir: str | None):
    """(items, reason): the lowest-quality given labels first, with given/predicted label and probability."""
    if issues is None:
        return [], "no label_issues.csv (a regression, or --no-audit)"
    if issues.empty:
        return [], "no held-out or out-of-fold rows were scored"
    if not images_dir or not os.path.isdir(images_dir):
        return [], "the images are not available (report rebuilt from a finished run's files)"
    files = dict(zip(predictions["image"].astype(str), predictions["image_file"]))
    items = []
    for _, row in issues.head(MAX_SUSPECTS).iterrows():
        path = os.path.join(images_dir, files.get(row["image"], ""))
        if os.path.isfile(path):
            with Image.open(path) as img:
                items.append({"src": report_images.data_uri(img), "image": row["image"], "split": row["split"],
                              "given": row["given_label"], "predicted": row["predicted_label"],
                              "p_given": float(row["given_label_probability"]),
                              "flagged": str(row["flagged"]).lower() == "true"})
    return items, None if items else "the suspected images could not be read"


def _health_marks(table: pd.DataFrame, health: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, list]:
    """(unhealthy, duplicate, issues text) per row of ``table`` from data_health.csv (all False without it)."""
    if health is None or health.empty or "issues" not in health:
        return np.zeros(len(table), bool), np.zeros(len(table), bool), [""] * len(table)
    text = dict(zip(health["image"].astype(str), health["issues"].astype(str)))
    found = [text.get(image, "") for image in table["image"].astype(str)]
    kinds = [set(t.split(",")) - {""} for t in found]
    duplicate = np.array([bool(k & DUPLICATE_ISSUES) for k in kinds])
    unhealthy = np.array([bool(k - DUPLICATE_ISSUES) for k in kinds])
    return unhealthy, duplicate, found


def data_map(table: pd.DataFrame | None, issues: pd.DataFrame | None, seed: int = 42,
             health: pd.DataFrame | None = None):
    """(plotly html or None, facts): the projection of embeddings.csv, capped at embeddings.MAP_CAP points;
    suspected label errors, unhealthy images and duplicates (data_health.csv) marked and always kept."""
    if table is None or table.empty:
        return None, {"reason": "no embeddings.csv (--no-audit)"}
    flagged = set(issues.loc[issues["flagged"].astype(str).str.lower() == "true", "image"]) if issues is not None \
        and not issues.empty else set()
    suspect = table["image"].isin(flagged).to_numpy()
    unhealthy, duplicate, issue_text = _health_marks(table, health)
    rows = embeddings.sample_rows(len(table), suspect | unhealthy | duplicate, seed=seed)
    features = table[[c for c in table.columns if c.startswith("f") and c[1:].isdigit()]].to_numpy(float)[rows]
    xy, method = embeddings.project(features, seed)
    shown = table.iloc[rows].reset_index(drop=True)
    hover = shown["image"] + " (" + shown["split"] + ")" + pd.Series(
        [f"<br>{issue_text[r]}" if issue_text[r] else "" for r in rows])
    fig = go.Figure()  # SVG (go.Scatter), not WebGL: draws where WebGL is off, e.g. headless browsers
    for label in sorted(shown["label"].unique()):
        part = shown["label"].to_numpy() == label
        fig.add_trace(go.Scatter(x=xy[part, 0], y=xy[part, 1], mode="markers", name=str(label),
                                   text=hover[part], hoverinfo="text+name", marker={"size": 6, "opacity": 0.7}))
    marks = {}
    for name, mask, marker in (("suspected label error", suspect, {"size": 12, "symbol": "circle-open", "color": "black"}),
                               ("unhealthy image", unhealthy, {"size": 11, "symbol": "x", "color": "#d62728"}),
                               ("duplicate", duplicate, {"size": 11, "symbol": "diamond-open", "color": "#7f7f7f"})):
        marked = mask[rows]
        marks[name] = int(marked.sum())
        if marked.any():
            fig.add_trace(go.Scatter(x=xy[marked, 0], y=xy[marked, 1], mode="markers", name=name,
                                       text=hover[marked], hoverinfo="text+name", marker=marker))
    fig.update_layout(title=f"Map of the images ({method}; {len(rows)} of {len(table)} images)",
                      xaxis={"showticklabels": False}, yaxis={"showticklabels": False}, height=520)
    return report_plots.to_html(fig), {"method": method, "shown": int(len(rows)), "total": int(len(table)),
                                       "cap": embeddings.MAP_CAP, "suspects_marked": marks["suspected label error"],
                                       "unhealthy_marked": marks["unhealthy image"],
                                       "duplicates_marked": marks["duplicate"]}


def audit_section(output_dir: str, summary: dict, predictions: pd.DataFrame, images_dir: str | None) -> dict:
    """What the template's _audit.html.j2 needs."""
    issues = _read(output_dir, "label_issues.csv")
    gallery, reason = suspects_gallery(issues, predictions, images_dir)
    figure, map_facts = data_map(_read(output_dir, "embeddings.csv"), issues,
                                 int((summary.get("training") or {}).get("random_seed", 42)),
                                 _read(output_dir, image_health.CSV_NAME))
    # a run from before the audit existed has no record: say so rather than show empty numbers
    facts = summary.get("audit") or {"skipped": "this run has no audit record (label_issues.csv, embeddings.csv)"}
    return {"facts": facts, "label_facts": facts.get("label_issues") or {}, "gallery": gallery,
            "gallery_reason": reason, "map": figure, "map_facts": map_facts,
            "n_flagged": int((issues["flagged"].astype(str).str.lower() == "true").sum())
            if issues is not None and not issues.empty else 0}
