"""The report's subgroup section: metrics.json's "subgroups" (evaluation/subgroups.py) as a table and a
forest plot (each slice's value and 95% interval against the overall number, per metric)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from image_learner.report.report_plots import to_html

LABELS = {"balanced_accuracy": "Balanced accuracy", "roc_auc": "ROC-AUC",
          "expected_calibration_error": "ECE", "mae": "MAE", "coverage": "Coverage of the sets"}


def metric_names(report: dict) -> list[str]:
    """The metrics the slices carry, in LABELS order."""
    return [m for m in LABELS if m in (report.get("overall") or {})]


def forest_plot(report: dict) -> str | None:
    """One panel per metric: a row per slice (column: slice), the value and its interval; a dashed line at
    the overall number; flagged slices in red."""
    names = metric_names(report)
    rows = [(f"{c['column']}: {s['slice']}", s) for c in report.get("columns", []) for s in c["slices"]]
    if not names or not rows:
        return None
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=[LABELS[m] for m in names])
    labels = [label for label, _ in rows][::-1]
    for col, name in enumerate(names, start=1):
        shown = [(label, s) for label, s in rows[::-1] if s.get(name) is not None]
        low = [s[name] - (s.get("ci95") or {}).get(name, [s[name]])[0] if (s.get("ci95") or {}).get(name) else 0
               for _, s in shown]
        high = [(s.get("ci95") or {})[name][1] - s[name] if (s.get("ci95") or {}).get(name) else 0 for _, s in shown]
        colours = ["#d62728" if name in s.get("worse_than_overall", []) else "#1f77b4" for _, s in shown]
        fig.add_trace(go.Scatter(x=[s[name] for _, s in shown], y=[label for label, _ in shown], mode="markers",
                                 marker=dict(color=colours, size=8), showlegend=False,
                                 error_x=dict(type="data", symmetric=False, array=high, arrayminus=low),
                                 hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=col)
        overall = report["overall"].get(name)
        if overall is not None:
            fig.add_vline(x=overall, line_dash="dash", line_color="grey", row=1, col=col)
    fig.update_yaxes(categoryorder="array", categoryarray=labels)
    fig.update_layout(title=f"Subgroups ({report.get('rows')}): value and 95% interval per slice; dashed: overall; "
                            "red: interval wholly worse")
    html = to_html(fig)
    return html.replace("height:420px", f"height:{max(420, 60 + 24 * len(rows))}px", 1)


def section(report: dict | None) -> dict | None:
    """What the template shows: the report, its metric names and labels, and the plot."""
    if not report:
        return None
    names = metric_names(report)
    return {"report": report, "metrics": [(m, LABELS[m]) for m in names], "plot": forest_plot(report)}
