"""The report's plotly figures, each returned as an HTML fragment (plotly.js itself is embedded once
by the report builder). Inputs are the run's tables; every number comes from scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn import metrics as skm

from image_learner.evaluation import metrics

LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(font=dict(size=11)))
CONFIG = {"displaylogo": False, "responsive": True}
SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#2ca02c"}


def to_html(fig: go.Figure) -> str:
    fig.update_layout(**LAYOUT)
    return fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)


def learning_curves(history: pd.DataFrame, best_epoch: int | None, chosen_by: str | None = None,
                    metric_names=("loss", "accuracy"), selection: dict | None = None) -> str | None:
    """``metric_names`` (history columns ``<split>_<metric>``) per epoch, train vs validation, with the
    kept (best) epoch marked and, in the title, the validation metric that chose it; a regression run
    passes its error metrics instead of accuracy. ``selection`` (run_summary's training.selection): the
    metric that picked the kept epoch gets the panel after the loss, the kept epoch a marker on its
    validation curve, and its hover the validation size it was computed on."""
    chosen = _selection_metric(history, selection)
    names = ["loss", chosen] if chosen else []
    panels = [m for m in dict.fromkeys([*names, *metric_names])
              if f"train_{m}" in history or f"validation_{m}" in history]
    if history.empty or not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels),
                        subplot_titles=[p.replace("_", " ").capitalize()
                                        + (" (picks the kept epoch)" if p == chosen and f"validation_{p}" in history
                                           else "") for p in panels])
    size = validation_size_text(selection)
    for col, metric in enumerate(panels, start=1):
        for split in ("train", "validation"):
            column = f"{split}_{metric}"
            if column in history:
                name = f"{split} {metric.replace('_', ' ')}"
                hover = f"epoch %{{x}}<br>{name} %{{y:.3f}}" + (f"<br>on {size}" if split == "validation" and size
                                                                else "") + "<extra></extra>"
                fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=name,
                                         line=dict(color=SPLIT_COLOURS[split]), hovertemplate=hover),
                              row=1, col=col)
        if best_epoch:
            label = {"annotation_text": f"kept: epoch {best_epoch}"} if col == 1 else {}
            fig.add_vline(x=best_epoch, line_dash="dash", line_color="grey", row=1, col=col, **label)
        if metric == chosen and best_epoch and f"validation_{metric}" in history \
                and (history["epoch"] == best_epoch).any():
            kept = float(history.loc[history["epoch"] == best_epoch, f"validation_{metric}"].iloc[0])
            fig.add_trace(go.Scatter(x=[best_epoch], y=[kept], mode="markers", name=f"kept epoch {best_epoch}",
                                     marker=dict(symbol="star", size=16, color="black"),
                                     hovertemplate=f"kept epoch {best_epoch}: validation "
                                                   f"{metric.replace('_', ' ')} {kept:.3f}"
                                                   + (f"<br>on {size}" if size else "") + "<extra></extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="Learning curves" + (f" (kept epoch: {chosen_by}" + (f", on {size}" if size else "")
                                                 + ")" if chosen_by else ""))
    return to_html(fig)


def _selection_metric(history: pd.DataFrame, selection: dict | None) -> str | None:
    """The history metric (without its split prefix) that picked the kept epoch, when the history has it (a
    cross-validation's final model, trained without validation, has only its train curve)."""
    column = (selection or {}).get("column") or ""
    metric = column.removeprefix("validation_")
    if not column.startswith("validation_") or not {column, f"train_{metric}"} & set(history.columns):
        return None
    return metric


def validation_size_text(selection: dict | None) -> str | None:
    """``14 validation images (7 groups)``: what the selection metric was computed on each epoch."""
    images = (selection or {}).get("validation_images")
    if images is None:
        return None
    groups = selection.get("validation_groups")
    return f"{images} validation images" + (f" ({groups} groups)" if groups is not None else "")


def _curve_classes(y_true, classes) -> list[str] | None:
    """Classes that get a one-vs-rest curve: those present (binary: the positive class only); None when
    fewer than two classes are present, as no curve is defined then."""
    present = [c for c in classes if c in set(y_true)]
    if len(present) < 2:
        return None
    return present if len(classes) > 2 else [classes[1]]


def roc_curves(y_true, proba, classes, which: str = "test") -> str | None:
    """One-vs-rest ROC per class present, plus the micro and macro averages."""
    y_true = np.asarray(y_true).astype(str)
    curve_classes = _curve_classes(y_true, classes)
    if curve_classes is None:
        return None
    fig = go.Figure()
    grid = np.linspace(0, 1, 201)
    tprs = []
    for c in curve_classes:
        k = classes.index(c)
        fpr, tpr, _ = skm.roc_curve(y_true == c, proba[:, k])
        tprs.append(np.interp(grid, fpr, tpr))
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{c} (AUC {skm.auc(fpr, tpr):.3f})"))
    if len(classes) > 2:
        onehot = np.column_stack([y_true == c for c in curve_classes])
        fpr, tpr, _ = skm.roc_curve(onehot.ravel(), proba[:, [classes.index(c) for c in curve_classes]].ravel())
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line=dict(dash="dot", width=3, color="black"),
                                 name=f"micro-average (AUC {skm.auc(fpr, tpr):.3f})"))
        macro = np.mean(tprs, axis=0)
        fig.add_trace(go.Scatter(x=grid, y=macro, mode="lines", line=dict(dash="dash", width=3, color="grey"),
                                 name=f"macro-average (AUC {skm.auc(grid, macro):.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="lightgrey"),
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title=f"ROC curves ({which})", xaxis_title="false positive rate (1 - specificity)",
                      yaxis_title="true positive rate (sensitivity)")
    return to_html(fig)


def pr_curves(y_true, proba, classes, which: str = "test") -> str | None:
    """Precision-recall per class present (binary: the positive class), with each class's prevalence."""
    y_true = np.asarray(y_true).astype(str)
    curve_classes = _curve_classes(y_true, classes)
    if curve_classes is None:
        return None
    fig = go.Figure()
    for c in curve_classes:
        k = classes.index(c)
        precision, recall, _ = skm.precision_recall_curve(y_true == c, proba[:, k])
        ap = skm.average_precision_score(y_true == c, proba[:, k])
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines",
                                 name=f"{c} (AP {ap:.3f}, prevalence {(y_true == c).mean():.2f})"))
    fig.update_layout(title=f"Precision-recall curves ({which})", xaxis_title="recall", yaxis_title="precision",
                      yaxis_range=[0, 1.05])
    return to_html(fig)


def confusion_matrices(y_true, y_pred, classes, which: str = "test") -> str:
    """Counts and row-normalised (each true class sums to 1) side by side."""
    counts = skm.confusion_matrix(y_true, y_pred, labels=classes)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["counts", "share of each true class"],
                        horizontal_spacing=0.15)
    for col, (values, fmt) in enumerate(((counts, "d"), (normalised, ".2f")), start=1):
        fig.add_trace(go.Heatmap(z=values, x=classes, y=classes, colorscale="Blues", showscale=False,
                                 text=[[format(v, fmt) for v in row] for row in values], texttemplate="%{text}",
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="predicted", row=1, col=col)
        fig.update_yaxes(title_text="true", autorange="reversed", row=1, col=col)
    fig.update_layout(title=f"Confusion matrix ({which})")
    return to_html(fig)


def reliability_diagram(y_true, proba, classes) -> str | None:
    """Observed against predicted per bin, by metrics.expected_calibration_error's rule: binary tasks
    P(positive) against the fraction of positives (no threshold involved), multiclass the top-class
    probability against the share of right arg-max predictions. The diagonal is perfect calibration."""
    ece, bins = metrics.expected_calibration_error(y_true, proba, classes)
    if not bins:
        return None
    if len(classes) == 2:
        predicted, observed = f"mean P({classes[1]})", f"fraction {classes[1]}"
    else:
        predicted, observed = "mean top-class probability", "fraction right (arg-max class)"
    centres = [(lo + hi) / 2 for lo, hi, *_ in bins]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=[b[3] for b in bins], width=0.09, name=f"{observed} in bin",
                         customdata=[[b[2], b[4]] for b in bins],
                         hovertemplate=f"{observed} %{{y:.2f}}<br>{predicted} %{{customdata[1]:.2f}}<br>"
                                       "%{customdata[0]} images<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="perfect calibration"))
    axis = f"P({classes[1]})" if len(classes) == 2 else "top-class probability"
    fig.update_layout(title=f"Reliability diagram (test; ECE {ece:.3f})", xaxis_title=f"{axis}, 10 bins",
                      yaxis_title=observed, xaxis_range=[0, 1], yaxis_range=[0, 1.05])
    return to_html(fig)


def predicted_class_probability(proba, classes, y_pred) -> np.ndarray:
    """Each row's probability of its predicted label: the top class for multiclass, but for a binary
    task with a tuned threshold possibly under 0.5 (P = 0.4 called positive at threshold 0.3)."""
    column = {c: k for k, c in enumerate(classes)}
    return np.array([proba[i, column[p]] if p in column else np.nan
                     for i, p in enumerate(np.asarray(y_pred).astype(str))], dtype=float)


def confidence_histogram(y_true, proba, classes, y_pred) -> str:
    """Probability given to the predicted class (binary: the thresholded label), for right and wrong
    test predictions."""
    confidence = predicted_class_probability(proba, classes, y_pred)
    right = np.asarray(y_true).astype(str) == np.asarray(y_pred).astype(str)
    fig = go.Figure()
    for mask, name, colour in ((right, "correct", "#2ca02c"), (~right, "wrong", "#d62728")):
        fig.add_trace(go.Histogram(x=confidence[mask], name=f"{name} ({int(mask.sum())})", marker_color=colour,
                                   xbins=dict(start=0, end=1, size=0.05), opacity=0.75))
    fig.update_layout(title="Confidence of test predictions", barmode="overlay",
                      xaxis_title="probability of the predicted class", yaxis_title="images")
    return to_html(fig)


def threshold_curves(is_positive, p_positive, threshold: float, positive: str, policy: str | None = None,
                     which: str = "validation") -> str | None:
    """Binary tasks, validation split (or pooled out-of-fold predictions: ``which``): sensitivity,
    specificity, balanced accuracy, F1 and MCC against the decision threshold, with the threshold in use
    marked and named by how it was set (``policy``)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return None
    grid = np.linspace(0, 1, 101)
    sens, spec, f1, mcc = [], [], [], []
    for t in grid:
        pred = p_positive >= t
        sens.append((pred & is_positive).sum() / is_positive.sum())
        spec.append((~pred & ~is_positive).sum() / (~is_positive).sum())
        f1.append(skm.f1_score(is_positive, pred, zero_division=0))
        mcc.append(skm.matthews_corrcoef(is_positive, pred))
    fig = go.Figure()
    for values, name in ((sens, "sensitivity"), (spec, "specificity"),
                         ((np.array(sens) + np.array(spec)) / 2, "balanced accuracy"), (f1, "F1"), (mcc, "MCC")):
        fig.add_trace(go.Scatter(x=grid, y=values, mode="lines", name=name))
    fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                  annotation_text=f"{threshold:.3f}: {policy or 'chosen'}")
    fig.update_layout(title=f"Metrics against the threshold on P({positive}) ({which})",
                      xaxis_title="threshold", yaxis_title="value", yaxis_range=[0, 1.05])
    return to_html(fig)


def fold_spread(folds: list[dict], metric: str, label: str, pooled: float | None) -> str | None:
    """Cross-validation: one dot per fold's ``metric``, with the folds' mean and the pooled out-of-fold value."""
    values = [(f["fold"], f.get(metric)) for f in folds if f.get(metric) is not None]
    if not values:
        return None
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[v for _, v in values], y=[label] * len(values), mode="markers+text",
                             text=[f"fold {k}" for k, _ in values], textposition="top center",
                             marker=dict(size=12, color="#1f77b4"), name="folds"))
    mean = float(np.mean([v for _, v in values]))
    fig.add_vline(x=mean, line_dash="dash", line_color="grey", annotation_text=f"mean {mean:.3f}")
    if pooled is not None:
        fig.add_vline(x=pooled, line_dash="dot", line_color="black", annotation_text=f"pooled {pooled:.3f}",
                      annotation_position="bottom right")
    fig.update_layout(title=f"{label} per fold (the spread across folds)", xaxis_title=label, showlegend=False)
    fig.update_layout(**LAYOUT)
    fig.update_layout(height=260)
    return fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)
