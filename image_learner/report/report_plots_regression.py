"""The regression report's plotly figures (HTML fragments, plotly.js embedded once by the report
builder): predicted against true with the identity line, the residuals' histogram, and residual against
true. A residual is predicted minus true: positive means the model guessed too high."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from image_learner.report.report_plots import SPLIT_COLOURS, to_html

SPLITS = ("train", "validation", "test")
# Ludwig's number-feature metrics in training_history.csv (<split>_<metric>) drawn as learning curves.
LEARNING_METRICS = ("loss", "mean_absolute_error", "root_mean_squared_error", "r2")


def _labelled(predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows with both a true and a predicted value, as floats."""
    if "true_value" not in predictions:
        return predictions.iloc[0:0].assign(true_value=[], predicted_value=[])
    table = predictions.assign(true_value=pd.to_numeric(predictions["true_value"], errors="coerce"),
                               predicted_value=pd.to_numeric(predictions["predicted_value"], errors="coerce"))
    return table.dropna(subset=["true_value", "predicted_value"])


def predicted_vs_true(predictions: pd.DataFrame, target: str = "value") -> str | None:
    """Each split's predictions against the true values, with the identity line (a perfect model's
    points lie on it); only the test points are shown at first, the others one click away."""
    table = _labelled(predictions)
    if table.empty:
        return None
    low = float(min(table["true_value"].min(), table["predicted_value"].min()))
    high = float(max(table["true_value"].max(), table["predicted_value"].max()))
    fig = go.Figure()
    for split in SPLITS:
        part = table[table["split"] == split]
        if len(part):
            fig.add_trace(go.Scatter(
                x=part["true_value"], y=part["predicted_value"], mode="markers", name=f"{split} ({len(part)})",
                marker=dict(color=SPLIT_COLOURS[split], size=6, opacity=0.7), text=part["image"],
                visible=True if split == "test" or "test" not in set(table["split"]) else "legendonly",
                hovertemplate="%{text}<br>true %{x:.3g}<br>predicted %{y:.3g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="identity (perfect)",
                             line=dict(dash="dash", color="grey"), hoverinfo="skip"))
    fig.update_layout(title="Predicted against true (click a split in the legend to show it)",
                      xaxis_title=f"true {target}", yaxis_title=f"predicted {target}")
    return to_html(fig)


def residual_histogram(predictions: pd.DataFrame, split: str = "test") -> str | None:
    """Distribution of the residuals (predicted - true) of one split, with zero marked."""
    part = _labelled(predictions)
    part = part[part["split"] == split]
    if part.empty:
        return None
    residual = part["predicted_value"] - part["true_value"]
    fig = go.Figure(go.Histogram(x=residual, name="images", marker_color=SPLIT_COLOURS[split], nbinsx=30))
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"Residuals ({split}; mean {residual.mean():.3g}, sd {residual.std(ddof=0):.3g})",
                      xaxis_title="residual: predicted - true", yaxis_title="images")
    return to_html(fig)


def residual_vs_true(predictions: pd.DataFrame, split: str = "test", target: str = "value") -> str | None:
    """Residual against the true value: a slope shows the model pulls its guesses towards the mean
    (too high for small true values, too low for large ones), a funnel that errors grow with the value."""
    part = _labelled(predictions)
    part = part[part["split"] == split]
    if part.empty:
        return None
    residual = part["predicted_value"] - part["true_value"]
    fig = go.Figure(go.Scatter(x=part["true_value"], y=residual, mode="markers", name=split, text=part["image"],
                               marker=dict(color=SPLIT_COLOURS[split], size=6, opacity=0.7),
                               hovertemplate="%{text}<br>true %{x:.3g}<br>residual %{y:.3g}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"Residual against true ({split})", xaxis_title=f"true {target}",
                      yaxis_title="residual: predicted - true", showlegend=False)
    return to_html(fig)


def value_summary(predictions: pd.DataFrame) -> list[dict]:
    """Per split: rows, and the true values' mean, standard deviation, median, min and max."""
    table = _labelled(predictions)
    rows = []
    for split in SPLITS:
        values = table.loc[table["split"] == split, "true_value"].to_numpy(dtype=float)
        if len(values):
            rows.append({"split": split, "n": int(len(values)), "mean": float(values.mean()),
                         "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                         "median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())})
    return rows
