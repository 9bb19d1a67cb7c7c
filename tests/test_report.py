"""The report: self-contained, every plot really drawn in headless Chromium with the network off,
labels escaped. Built from a synthetic finished run (no training needed)."""

import json
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from image_learner.evaluation import metrics
import report_builder
from conftest import ROOT

EVIL = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"


def write_run(folder, classes, task="multiclass", seed=0, absent_from_test=None):
    """A finished run's files, as pipeline.py writes them, with plausible random predictions."""
    rng = np.random.default_rng(seed)
    n = 90
    split = np.array(["train"] * 60 + ["validation"] * 10 + ["test"] * 20)
    truth = np.array([classes[i % len(classes)] for i in range(n)])
    others = [c for c in classes if c != absent_from_test]
    truth[(split == "test") & (truth == absent_from_test)] = others[0]
    logits = rng.normal(size=(n, len(classes))) + 2.0 * (np.asarray(classes)[None, :] == truth[:, None])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    threshold = 0.5 if task == "binary" else None
    predicted = (np.where(proba[:, 1] >= threshold, classes[1], classes[0]) if task == "binary"
                 else np.asarray(classes)[proba.argmax(axis=1)])
    table = pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "image_file": [f"img{i}.png" for i in range(n)],
                          "split": split, "true_label": truth, "predicted_label": predicted})
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = proba[:, k]
    table["duplicate_group"] = np.arange(n)
    os.makedirs(folder, exist_ok=True)
    table.to_csv(os.path.join(folder, "predictions.csv"), index=False)
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.8, 0.5], "validation_loss": [1.3, 1.0, 1.1],
                            "train_accuracy": [0.4, 0.6, 0.8], "validation_accuracy": [0.3, 0.5, 0.45]})
    history.to_csv(os.path.join(folder, "training_history.csv"), index=False)
    counts = {s: table[table.split == s].true_label.value_counts().to_dict() for s in ("train", "validation", "test")}
    summary = {
        "tool": {"name": "image-learner", "version": "0.1.0"}, "inputs": {"csv_file": "meta.csv",
                                                                          "image_zip": f"{EVIL}.zip"},
        "task": task, "classes": classes, "positive_label": classes[1] if task == "binary" else None,
        "threshold": threshold, "warnings": [f"class {EVIL!r} has only 3 image(s)"],
        "dataset": {"csv_rows": n, "images_in_zip": n, "matched_rows": n, "unmatched_rows": 0, "unused_images": 0,
                    "class_counts": counts},
        "split": {"method": "random, stratified by label, seeded", "seed": 42, "probabilities": [0.7, 0.1, 0.2],
                  "grouped_by": ["leakage guard"]},
        "leakage": {"guard": True, "max_distance": 20, "duplicate_groups": 2, "images_in_duplicate_groups": 4,
                    "duplicate_examples": [["img1.png", "img2.png"]], "straddling_groups": 1, "straddling_rows": 2,
                    "straddling_examples": [[f"{EVIL}.png", "img3.png"]]},
        "model": {"name": "caformer_s18.sail_in1k_384", "pretrained": True, "weights_source": "hub",
                  "fine_tune": True, "image_size": 384},
        "training": {"epochs": 3, "best_epoch": 2, "epochs_run": 3}, "device": "cpu", "versions": {"ludwig": "0.17.10"},
        "timings_s": {"training": 1.0},
    }
    with open(os.path.join(folder, "run_summary.json"), "w") as handle:
        json.dump(summary, handle)
    with open(os.path.join(folder, "config.yaml"), "w") as handle:
        yaml.safe_dump({"input_features": [{"name": "image_path", "type": "image"}]}, handle)
    with open(os.path.join(folder, "metrics.json"), "w") as handle:
        json.dump(metrics.metrics_by_split(table, classes, 42), handle)
    return folder


@pytest.fixture(scope="module")
def chromium():
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "ensure_chromium.sh")], check=True)
    return CHROMIUM


def rendered_dom(chromium, html_path, tmp_path) -> str:
    """The DOM after scripts ran, with every host unresolvable (no network)."""
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=20000", "--dump-dom", f"file://{html_path}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("task, classes, n_figures", [
    ("multiclass", ["akiec", "mel", "nv", EVIL], 6),  # learning, ROC, PR, confusion, reliability, confidence
    ("binary", ["benign", "malignant"], 7),  # + metric-vs-threshold
])
def test_every_plot_draws_offline(chromium, tmp_path, task, classes, n_figures):
    run = write_run(str(tmp_path / "run"), classes, task)
    path = report_builder.build_report(run)
    html = open(path, encoding="utf-8").read()
    assert html.count("<script") - html.count("<script>alert") == n_figures + 1  # plotly.js once + one per plot
    import plotly.offline

    page = html.replace(plotly.offline.get_plotlyjs(), "")  # the bundle's own code mentions plotly.com
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing fetched from the network
    dom = rendered_dom(chromium, path, tmp_path)
    assert dom.count('class="plot-container plotly"') == n_figures  # Plotly.newPlot ran for every figure
    assert dom.count('class="main-svg"') >= 2 * n_figures  # and drew SVG for each


def test_labels_and_file_names_are_escaped(chromium, tmp_path):
    run = write_run(str(tmp_path / "run"), ["a", "b", EVIL])
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    assert EVIL not in html  # never raw, not in the tables nor inside the plots' JSON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    dom = rendered_dom(chromium, os.path.join(run, "report.html"), tmp_path)
    assert "<script>alert(1)</script>" not in dom  # no such element after the scripts ran
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text


def test_tables_hold_the_numbers_and_the_leak_warning(tmp_path):
    run = write_run(str(tmp_path / "run"), ["akiec", "mel", "nv"])
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    test_metrics = json.load(open(os.path.join(run, "metrics.json")))["test"]
    assert f"{test_metrics['balanced_accuracy']:.3f}" in html
    low, high = test_metrics["ci95"]["accuracy"]
    assert f"{low:.3f} – {high:.3f}" in html
    assert "Leakage: the test numbers below are optimistic" in html
    assert "<noscript>" in html
    assert "Not shown: the images are not available" in html  # rebuilt from files: says why


def test_absent_classes_are_named_as_left_out_of_the_macro_averages(tmp_path):
    run = write_run(str(tmp_path / "run"), ["akiec", "mel", "nv"], absent_from_test="mel")
    test_metrics = json.load(open(os.path.join(run, "metrics.json")))["test"]
    assert test_metrics["macro_over"] == ["akiec", "nv"] and test_metrics["classes_absent"] == ["mel"]
    html = " ".join(open(report_builder.build_report(run), encoding="utf-8").read().split())
    note = re.search(r'<p class="muted" id="absent-classes">(.*?)</p>', html, re.S).group(1)
    assert "Absent from the test split" in note and "left out of its macro averages" in note and "mel" in note
    assert "plain means over the classes present in that split's true labels" in html  # the rule, always stated


def test_binary_calibration_is_explained_as_threshold_free(tmp_path):
    run = write_run(str(tmp_path / "run"), ["benign", "malignant"], task="binary")
    html = " ".join(open(report_builder.build_report(run), encoding="utf-8").read().split())
    assert "does not depend on the decision threshold" in html  # the guide
    assert "10 equal-width bins of P(malignant), each bin's mean against its fraction of malignant" in html
    assert "fraction malignant" in html and "mean P(malignant)" in html  # the diagram's axis and hover text
    assert "top-class probability" not in html  # the multiclass rule is not shown
    assert "Average precision (positive class)" in html


def test_confidence_is_the_probability_of_the_thresholded_label():
    """Binary at threshold 0.3: P(malignant) = 0.4 is called malignant, so its confidence is 0.4, not
    the top-class 0.6 of benign (which contradicted the label shown as right or wrong)."""
    from image_learner.report import report_plots

    proba = np.array([[0.6, 0.4], [0.8, 0.2], [0.1, 0.9]])
    confidence = report_plots.predicted_class_probability(proba, ["benign", "malignant"],
                                                          ["malignant", "benign", "malignant"])
    assert confidence == pytest.approx([0.4, 0.8, 0.9])


def test_report_says_how_many_groups_the_intervals_rest_on(tmp_path):
    """Test images in pairs sharing a duplicate group: the interval sentence names 10 groups of 20 images."""
    folder = str(tmp_path / "run")
    write_run(folder, ["akiec", "mel", "nv"])
    table = pd.read_csv(os.path.join(folder, "predictions.csv"))
    test = table["split"] == "test"
    table.loc[test, "duplicate_group"] = 1000 + np.arange(test.sum()) // 2
    table.to_csv(os.path.join(folder, "predictions.csv"), index=False)
    with open(os.path.join(folder, "metrics.json"), "w") as handle:
        json.dump(metrics.metrics_by_split(table, ["akiec", "mel", "nv"], 42), handle)
    html = " ".join(open(report_builder.build_report(folder), encoding="utf-8").read().split())
    assert ("Intervals: percentile bootstrap, 95% intervals over 1,000 resamples of 10 groups of the 20 test images "
            "(images sharing a duplicate group are drawn together, all or none), seed 42") in html
    os.remove(os.path.join(folder, "metrics.json"))  # recomputed from predictions.csv: the same groups
    html = " ".join(open(report_builder.build_report(folder), encoding="utf-8").read().split())
    assert "1,000 resamples of 10 groups of the 20 test images" in html
def _with_selection(run, validation_images, validation_groups):
    """write_run's run, with a history where accuracy peaks at epoch 3 while balanced accuracy, the metric
    that picked the kept epoch, peaks at epoch 1."""
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.8, 0.5], "validation_loss": [1.3, 1.0, 1.1],
                            "train_accuracy": [0.4, 0.6, 0.8], "validation_accuracy": [0.3, 0.5, 0.65],
                            "train_balanced_accuracy": [0.35, 0.55, 0.75],
                            "validation_balanced_accuracy": [0.615, 0.4, 0.385]})
    history.to_csv(os.path.join(run, "training_history.csv"), index=False)
    path = os.path.join(run, "run_summary.json")
    summary = json.load(open(path))
    summary["training"].update(best_epoch=1, best_epoch_chosen_by="highest validation balanced accuracy",
                               selection={"metric": "balanced_accuracy", "column": "validation_balanced_accuracy",
                                          "higher_is_better": True, "validation_images": validation_images,
                                          "validation_groups": validation_groups})
    json.dump(summary, open(path, "w"))
    return run


def _learning_figure(html):
    import html as html_lib

    start = html.index('id="plot-learning"')
    fragment = html[start:html.index('<div class="figure"', start + 1)]
    data = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", fragment, re.S).group(1)
    return json.loads(html_lib.unescape(data)), fragment


def _values(array):
    """A trace's numbers: a list, or plotly's base64 typed array."""
    import base64

    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def test_learning_curves_plot_the_metric_that_picked_the_kept_epoch_with_its_validation_size(tmp_path):
    run = _with_selection(write_run(str(tmp_path / "run"), ["akiec", "mel", "nv"]), 10, 6)
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    traces, fragment = _learning_figure(html)
    by_name = {t["name"]: t for t in traces}
    assert _values(by_name["validation balanced accuracy"]["y"]) == [0.615, 0.4, 0.385]
    assert "validation accuracy" not in by_name  # the metric that did not choose is not drawn
    kept = by_name["kept epoch 1"]
    assert _values(kept["x"]) == [1] and _values(kept["y"]) == [0.615]  # the marker sits on the selection curve's best point
    assert "on 10 validation images (6 groups)" in by_name["validation balanced accuracy"]["hovertemplate"]
    assert "Balanced accuracy (picks the kept epoch)" in fragment
    table = html[html.index('id="epoch-selection"'):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<tr><td class=\"num\">(\d)</td>.*?<td class=\"num\">([\d.]+)</td>\s*<td>(.*?)</td></tr>",
                       table, re.S)
    assert [(e, v) for e, v, _ in cells] == [("1", "0.615"), ("2", "0.400"), ("3", "0.385")]
    assert [bool(k) for _, _, k in cells] == [True, False, False]
    assert "10 validation images (6 groups)" in table
    note = html[html.index('id="small-validation"'):]
    assert "10 images (fewer than 30)" in note and "6 groups of related images (fewer than 10)" in note
    assert "standard error of up to 0.16" in note  # 0.5 / sqrt(10)


def test_no_small_validation_note_when_validation_is_large_enough(tmp_path):
    run = _with_selection(write_run(str(tmp_path / "run"), ["akiec", "mel", "nv"]), 30, 10)
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    assert 'id="epoch-selection"' in html and 'id="small-validation"' not in html
    from image_learner.report import report_selection

    assert "29 images" in report_selection.small_validation_note({"metric": "loss", "validation_images": 29,
                                                                  "validation_groups": 29})
    assert "9 groups" in report_selection.small_validation_note({"metric": "loss", "validation_images": 300,
                                                                 "validation_groups": 9})


def test_a_cross_validated_final_model_plots_the_train_curve_of_the_selection_metric_without_a_kept_star():
    from image_learner.report import report_plots

    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.7], "train_accuracy": [0.5, 0.6],
                            "train_balanced_accuracy": [0.41, 0.52]})
    selection = {"metric": "balanced_accuracy", "column": "validation_balanced_accuracy", "higher_is_better": True,
                 "validation_images": None, "validation_groups": None}
    html = report_plots.learning_curves(history, 2, "the median kept epoch of the folds", ("loss",), selection)
    assert '"name":"train balanced accuracy"' in html and "picks the kept epoch" not in html
    assert "kept epoch 2" not in html and "validation images" not in html


@pytest.mark.parametrize("alpha, highest, said", [
    (0.3, 0.3, "0.3: "),
    (0.2, 0.3, "α 0.3 scored higher there but its gain was within noise"),
    (0.0, 0.7, "none was, so the argmax is kept (the highest, α 0.7, was within noise)"),
])
def test_the_balanced_decision_says_how_its_alpha_beat_its_noise(tmp_path, alpha, highest, said):
    from image_learner.evaluation import class_decision

    classes = ["akiec", "mel", "nv"]
    run = write_run(str(tmp_path / "run"), classes)
    table = pd.read_csv(os.path.join(run, "predictions.csv"))
    part = table[table["split"] == "validation"]
    record = class_decision.choose(part["true_label"], part[[f"prob_{c}" for c in classes]].to_numpy(), classes,
                                   table.loc[table["split"] == "train", "true_label"], groups=np.arange(len(part)))
    record.update(alpha=alpha, highest_alpha=highest)
    summary = json.load(open(os.path.join(run, "run_summary.json")))
    summary["class_decision"] = record
    with open(os.path.join(run, "run_summary.json"), "w") as handle:
        json.dump(summary, handle)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", open(report_builder.build_report(run), encoding="utf-8").read()))
    assert ("whose gain over the argmax is more than noise (the 95% lower bound of the paired gain, over 1000 "
            "resamples of the 10 groups of those rows, above 0)") in text
    assert said in text and f"{alpha}: " in text and "in brackets, the lower bound of the gain over the argmax" in text
    assert ("none was" in text) == (alpha == 0) and ("scored higher there" in text) == (0 < alpha < highest)
