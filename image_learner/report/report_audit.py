"""The report's "Data audit" section: a gallery of the suspected label errors (label_issues.csv) and a 2-D
map of the images' features (embeddings.csv), coloured by class, suspects marked. Both read the run's
files, so a rebuilt report shows them too (the gallery only while the images are available)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from image_learner.evaluation import embeddings
from image_learner.report import report_images, report_plots

MAX_SUSPECTS = 16


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


def data_map(table: pd.DataFrame | None, issues: pd.DataFrame | None, seed: int = 42):
    """(plotly html or None, facts): the projection of embeddings.csv, capped at embeddings.MAP_CAP points."""
    if table is None or table.empty:
        return None, {"reason": "no embeddings.csv (--no-audit)"}
    flagged = set(issues.loc[issues["flagged"].astype(str).str.lower() == "true", "image"]) if issues is not None \
        and not issues.empty else set()
    suspect = table["image"].isin(flagged).to_numpy()
    rows = embeddings.sample_rows(len(table), suspect, seed=seed)
    features = table[[c for c in table.columns if c.startswith("f") and c[1:].isdigit()]].to_numpy(float)[rows]
    xy, method = embeddings.project(features, seed)
    shown = table.iloc[rows].reset_index(drop=True)
    fig = go.Figure()
    for label in sorted(shown["label"].unique()):
        part = shown["label"].to_numpy() == label
        fig.add_trace(go.Scattergl(x=xy[part, 0], y=xy[part, 1], mode="markers", name=str(label),
                                   text=shown["image"][part] + " (" + shown["split"][part] + ")",
                                   hoverinfo="text+name", marker={"size": 6, "opacity": 0.7}))
    marked = suspect[rows]
    if marked.any():
        fig.add_trace(go.Scattergl(x=xy[marked, 0], y=xy[marked, 1], mode="markers", name="suspected label error",
                                   text=shown["image"][marked], hoverinfo="text+name",
                                   marker={"size": 12, "symbol": "circle-open", "color": "black"}))
    fig.update_layout(title=f"Map of the images ({method}; {len(rows)} of {len(table)} images)",
                      xaxis={"showticklabels": False}, yaxis={"showticklabels": False}, height=520)
    return report_plots.to_html(fig), {"method": method, "shown": int(len(rows)), "total": int(len(table)),
                                       "cap": embeddings.MAP_CAP, "suspects_marked": int(marked.sum())}


def audit_section(output_dir: str, summary: dict, predictions: pd.DataFrame, images_dir: str | None) -> dict:
    """What the template's _audit.html.j2 needs."""
    issues = _read(output_dir, "label_issues.csv")
    gallery, reason = suspects_gallery(issues, predictions, images_dir)
    figure, map_facts = data_map(_read(output_dir, "embeddings.csv"), issues,
                                 int((summary.get("training") or {}).get("random_seed", 42)))
    facts = (summary.get("audit") or {})
    return {"facts": facts, "label_facts": facts.get("label_issues") or {}, "gallery": gallery,
            "gallery_reason": reason, "map": figure, "map_facts": map_facts,
            "n_flagged": int((issues["flagged"].astype(str).str.lower() == "true").sum())
            if issues is not None and not issues.empty else 0}
