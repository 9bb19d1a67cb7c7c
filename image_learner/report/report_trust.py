"""The report's "How far to trust each prediction" section: calibration before/after, the conformal sets'
(or intervals') coverage, set sizes, and the risk-coverage curve. Reads metrics.json's ``trust`` entry
(evaluation/trust.py) and predictions.csv; plots are plotly fragments like report_plots'."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from image_learner.evaluation import bootstrap
from image_learner.evaluation import calibration
from image_learner.evaluation import metrics
from image_learner.report.report_plots import to_html


def reliability_before_after(y_true, calibrated, classes, temperature: float) -> str | None:
    """Observed against predicted per bin (metrics.expected_calibration_error's rule) for the model's
    own probabilities (softmax(T log p')) and the temperature-scaled ones, on the same rows."""
    raw = calibration.apply_temperature(calibrated, 1.0 / temperature)
    fig = go.Figure()
    for name, proba, colour in (("before (model's softmax)", raw, "#d62728"),
                                (f"after (temperature {temperature:.2f})", calibrated, "#1f77b4")):
        ece, bins = metrics.expected_calibration_error(y_true, proba, classes)
        if not bins:
            return None
        fig.add_trace(go.Scatter(x=[b[4] for b in bins], y=[b[3] for b in bins], mode="lines+markers",
                                 name=f"{name}: ECE {ece:.3f}", line=dict(color=colour),
                                 customdata=[b[2] for b in bins],
                                 hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata} images"
                                               "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="perfect calibration"))
    axis = f"mean P({classes[1]})" if len(classes) == 2 else "mean top-class probability"
    fig.update_layout(title="Reliability before and after temperature scaling (test)", xaxis_title=f"{axis} in bin",
                      yaxis_title="observed", xaxis_range=[0, 1], yaxis_range=[0, 1.05])
    return to_html(fig)


def set_size_histogram(histogram: dict, coverage: float) -> str | None:
    if not histogram:
        return None
    sizes = sorted(histogram, key=int)
    fig = go.Figure(go.Bar(x=[int(k) for k in sizes], y=[histogram[k] for k in sizes]))
    fig.update_layout(title=f"Prediction-set sizes (test; target coverage {coverage:g})",
                      xaxis_title="classes in the set", yaxis_title="images", xaxis_dtick=1)
    return to_html(fig)


def risk_coverage_plot(curve: list[dict]) -> str | None:
    if not curve:
        return None
    fig = go.Figure(go.Scatter(x=[p["coverage"] for p in curve], y=[p["error_rate"] for p in curve],
                               mode="lines+markers", customdata=[p["kept"] for p in curve],
                               hovertemplate="kept %{x:.0%} (%{customdata} images)<br>error rate %{y:.3f}"
                                             "<extra></extra>"))
    fig.update_layout(title="Risk-coverage (test): error rate of the most confident images kept",
                      xaxis_title="share of test images kept (least confident set aside)",
                      yaxis_title="error rate among kept", xaxis_range=[0, 1.02])
    return to_html(fig)


def section(found: dict | None, predictions, classes, task: str) -> dict | None:
    """The template's ``trust`` context: facts, numbers and figure fragments (None without an entry)."""
    if not found:
        return None
    coverage = found.get("coverage_test") or {}
    figures = []
    test = predictions[predictions["split"] == "test"]
    if task != "regression" and found.get("temperature") and len(test):
        proba = test[[f"prob_{c}" for c in classes]].to_numpy(float)
        figures.append(("reliability-before-after",
                        reliability_before_after(test["true_label"].astype(str).to_numpy(), proba, classes,
                                                 found["temperature"])))
    if coverage.get("set_size_histogram"):
        figures.append(("set-sizes", set_size_histogram(coverage["set_size_histogram"], found["coverage"])))
    risk = found.get("risk_coverage") or {}
    if risk.get("curve"):
        figures.append(("risk-coverage", risk_coverage_plot(risk["curve"])))
    return {"found": found, "coverage": coverage, "calibration": found.get("calibration_test") or {},
            "risk": risk, "basis": bootstrap.describe(coverage.get("ci95_basis"), "test images"),
            "figures": [(name, html) for name, html in figures if html],
            "per_class": sorted((coverage.get("mean_set_size_per_class") or {}).items()),
            "at": next((k for k in risk if k.startswith("balanced_accuracy_at_")), None),
            "np": np}
