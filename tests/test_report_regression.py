"""The regression report, from a synthetic finished regression run (no training): the metric table
with the test intervals and the median baseline, predicted-vs-true and residual plots drawn offline,
no classification plots, user text escaped."""

import json
import os
import re

import numpy as np
import pandas as pd

from image_learner.evaluation import regression_metrics
import report_builder
from test_report import EVIL, chromium, rendered_dom  # noqa: F401 (chromium is a fixture)

CLASS_PLOTS = ("plot-roc", "plot-pr", "plot-confusion", "plot-reliability", "plot-confidence", "plot-threshold")


def write_regression_run(folder, seed=0, with_metrics=True):
    """A finished regression run's files as the contract defines them."""
    rng = np.random.default_rng(seed)
    n = 90
    split = np.array(["train"] * 60 + ["validation"] * 10 + ["test"] * 20)
    truth = rng.uniform(20, 80, n).round()
    predicted = truth + rng.normal(0, 8, n)
    names = [f"img{i}.png" for i in range(n)]
    names[-1] = f"{EVIL}.png"
    table = pd.DataFrame({"image": names, "image_file": names, "split": split, "true_value": truth,
                          "predicted_value": predicted, "duplicate_group": np.arange(n)})
    os.makedirs(folder, exist_ok=True)
    table.to_csv(os.path.join(folder, "predictions.csv"), index=False)
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [300.0, 120.0, 60.0],
                            "validation_loss": [320.0, 150.0, 170.0],
                            "train_mean_absolute_error": [15.0, 9.0, 6.0],
                            "validation_mean_absolute_error": [16.0, 10.0, 11.0],
                            "train_r2": [-0.5, 0.3, 0.7], "validation_r2": [-0.6, 0.2, 0.1]})
    history.to_csv(os.path.join(folder, "training_history.csv"), index=False)
    summary = {
        "tool": {"name": "image-learner", "version": "0.1.0"},
        "inputs": {"csv_file": "meta.csv", "image_zip": f"{EVIL}.zip"},
        "task": "regression", "classes": [], "positive_label": None, "threshold": None,
        "target_column": f"age {EVIL}", "warnings": [f"column {EVIL!r} ignored"],
        "dataset": {"csv_rows": n, "images_in_zip": n, "matched_rows": n, "unmatched_rows": 0, "unused_images": 0},
        "split": {"method": "random, seeded", "seed": 42, "probabilities": [0.7, 0.1, 0.2], "grouped_by": []},
        "model": {"name": "tf_efficientnet_lite0", "pretrained": True, "weights_source": "hub", "fine_tune": True,
                  "image_size": 224},
        "training": {"epochs": 3, "best_epoch": 2, "epochs_run": 3}, "device": "cpu",
        "versions": {"ludwig": "0.17.10"}, "timings_s": {"training": 1.0},
    }
    with open(os.path.join(folder, "run_summary.json"), "w") as handle:
        json.dump(summary, handle)
    if with_metrics:
        with open(os.path.join(folder, "metrics.json"), "w") as handle:
            json.dump(regression_metrics.metrics_by_split(table, 42), handle)
    return folder


def test_metric_table_has_test_intervals_and_the_median_baseline(tmp_path):
    run = write_regression_run(str(tmp_path / "run"))
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    found = json.load(open(os.path.join(run, "metrics.json")))
    test = found["test"]
    for key in ("mae", "rmse", "r2", "pearson_r", "spearman_r", "median_absolute_error", "baseline_median_mae"):
        assert f"{test[key]:.3f}" in html, key
        low, high = test["ci95"][key]
        assert f"{low:.3f} – {high:.3f}" in html, key
    assert "Mean absolute error (MAE)" in html and "always predicting the train median" in html
    assert f"{found['train']['baseline_median']:.3f}" in html  # the baseline's constant is named
    assert 'id="value-summary"' in html


def test_metrics_recomputed_when_metrics_json_is_missing(tmp_path):
    run = write_regression_run(str(tmp_path / "run"), with_metrics=False)
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    table = pd.read_csv(os.path.join(run, "predictions.csv"))
    assert f"{regression_metrics.metrics_by_split(table)['test']['mae']:.3f}" in html


def test_regression_plots_draw_offline_and_no_classification_plots(chromium, tmp_path):  # noqa: F811
    run = write_regression_run(str(tmp_path / "run"))
    path = report_builder.build_report(run)
    html = open(path, encoding="utf-8").read()
    for name in ("plot-learning", "plot-scatter", "plot-residuals", "plot-residual-vs-true"):
        assert f'id="{name}"' in html, name
    for name in CLASS_PLOTS:
        assert f'id="{name}"' not in html, name
    assert "Per class" not in html and "Confusion matrix" not in html and "Most confident mistakes" not in html
    assert "identity (perfect)" in html  # the identity line of predicted against true
    assert "Mean absolute error" in html and "R2" in html  # learning curves of the history's number metrics
    import plotly.offline

    page = html.replace(plotly.offline.get_plotlyjs(), "")
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing fetched from the network
    dom = rendered_dom(chromium, path, tmp_path)
    assert dom.count('class="plot-container plotly"') == 4  # Plotly.newPlot ran for every figure


def test_user_text_is_escaped(tmp_path):
    run = write_regression_run(str(tmp_path / "run"))
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    assert EVIL not in html  # file names, target column, warnings: never raw, not in the plots' JSON either
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_predict_report_of_a_regression_model(tmp_path):
    """predict on new images with the target in the CSV: no split column (all test), no history, no
    train split, so no baseline; the report still has the metrics and the scatter."""
    run = write_regression_run(str(tmp_path / "run"), with_metrics=False)
    table = pd.read_csv(os.path.join(run, "predictions.csv"))
    table[table.split == "test"].drop(columns=["split", "duplicate_group"]).to_csv(
        os.path.join(run, "predictions.csv"), index=False)
    os.remove(os.path.join(run, "training_history.csv"))
    summary = json.load(open(os.path.join(run, "run_summary.json")))
    summary.update(mode="predict", training={})
    with open(os.path.join(run, "run_summary.json"), "w") as handle:
        json.dump(summary, handle)
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    test = regression_metrics.metrics_by_split(table[table.split == "test"].assign(split="test"))["test"]
    assert f"{test['mae']:.3f}" in html and "baseline_median_mae" not in test
    assert 'id="plot-scatter"' in html and 'id="plot-learning"' not in html
    text = html[:html.index('<h2 id="plots">')]  # before plotly.js, whose code says "textBaseline"
    assert "Baseline MAE" not in text and "always predicts the median" not in text and "Baseline:" not in text
