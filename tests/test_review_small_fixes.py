"""Issue 20's smaller findings: strict JSON outputs, bounded target scaling, spreadsheet-safe
predictions.csv, one unreadable-image rule for training and predict, no dead code, a README that says
what BENCHMARKS.md measured. (The --pretrained-weights record is tested in test_predict.py.)"""

import ast
import glob
import io
import json
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, ROOT, TEST_DATA, make_zip, png_bytes
from test_model_archive import TINY_REGRESSION_MODEL, _edit_json, _members, _refused, _set


def _strict_json(path):
    """Parse as jq / JSON.parse would: NaN, Infinity and -Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} in {path}")
    with open(path) as handle:
        return json.load(handle, parse_constant=refuse)


def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    from image_learner import run_files

    payload = {"auc": float("nan"), "rmse": np.float64("inf"), "low": -np.inf, "n": np.int64(3),
               "ci": [np.float32(0.25), float("nan")], "nested": {"r2": np.float64("nan"), "ok": 0.5},
               "flag": np.bool_(True), "text": "NaN"}
    run_files.write_json(str(tmp_path / "metrics.json"), payload)
    assert _strict_json(tmp_path / "metrics.json") == {
        "auc": None, "rmse": None, "low": None, "n": 3, "ci": [0.25, None], "nested": {"r2": None, "ok": 0.5},
        "flag": True, "text": "NaN"}


def test_write_json_still_refuses_what_is_not_json(tmp_path):
    from image_learner import run_files

    with pytest.raises(TypeError, match="ndarray"):
        run_files.write_json(str(tmp_path / "x.json"), {"array": np.zeros(2)})


def test_bootstrap_intervals_use_finite_resamples_only():
    """An overflowed resample (an infinite RMSE) is no bound; NaN (undefined) ones are skipped as before."""
    from image_learner.evaluation import metrics

    values = np.r_[np.linspace(1.0, 2.0, 40), [np.inf, np.inf, np.nan]]
    interval = metrics.percentile_intervals({"rmse": values}, level=0.95)["rmse"]
    finite = values[np.isfinite(values)]
    assert interval == [pytest.approx(np.percentile(finite, 2.5)), pytest.approx(np.percentile(finite, 97.5))]
    assert metrics.percentile_intervals({"rmse": np.r_[np.full(5, 1.0), np.full(20, np.inf)]})["rmse"] is None


SCALING_CASES = {
    "std 1e308": ({"std": 1e308}, "1e+308"),
    "mean 1e308": ({"mean": 1e308}, "1e+308"),
    "std negative": ({"std": -2.0}, "-2.0"),
    "std zero": ({"std": 0.0}, "0.0"),
    "std below the floor": ({"std": 1e-300}, "1e-300"),
    "std NaN": ({"std": float("nan")}, "nan"),
    "mean infinite": ({"mean": float("inf")}, "inf"),
}


@pytest.mark.parametrize("case", SCALING_CASES)
def test_a_crafted_target_scaling_is_refused(tmp_path, capsys, case):
    """Prediction is z * std + mean: a scale of 1e308 makes every value (and metric) infinite."""
    change, shown = SCALING_CASES[case]

    def edit(manifest):
        manifest["target_scaling"].update(change)
    err = _refused(tmp_path, capsys, _edit_json(_members(TINY_REGRESSION_MODEL), "model/image_learner.json", edit),
                   "image_learner.json: target_scaling is")
    assert shown in err and "std from 1e-100 to 1e+100" in err


def test_the_genuine_scaling_is_inside_the_bounds():
    from image_learner.model import model_manifest

    with zipfile.ZipFile(TINY_REGRESSION_MODEL) as archive:
        scaling = json.loads(archive.read("model/image_learner.json"))["target_scaling"]
    assert model_manifest.target_scaling_ok(scaling)
    assert not model_manifest.target_scaling_ok({**scaling, "std": 1e101})
    assert not model_manifest.target_scaling_ok({**scaling, "std": True})


def test_training_refuses_a_target_predict_would_refuse():
    from image_learner.training import model_fit
    from image_learner.errors import InputError

    assert model_fit.target_scaling([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2 / 3))}
    with pytest.raises(InputError, match="rescale the target column"):
        model_fit.target_scaling([1e200, 3e200])
    with pytest.raises(InputError, match="standard deviation inf"):
        model_fit.target_scaling([1e300, -1e300, 1e308])


# Class names a crafted CSV (or model) could carry, each a formula in a spreadsheet, and harmless ones.
CRAFTED = {"akiec": "=1+2", "bcc": "+cmd|' /C calc'!A0", "bkl": "-2+3", "df": "@SUM(A1)", "mel": "-1",
           "nv": "'quoted", "vasc": "plain"}


def test_spreadsheet_cells_are_neutralised_and_read_back_exactly(tmp_path):
    from image_learner.data.input_utils import read_output_csv, write_output_csv

    labels = ["=1+2", "+x", "-2+3", "@SUM(A1)", "\tpad", "-1", "+2.5e3", "'quoted", "plain", "-"]
    table = pd.DataFrame({"image": labels, "true_label": labels, "predicted_label": labels[::-1],
                          "predicted_value": -np.arange(len(labels), dtype=float) - 0.5})
    write_output_csv(table, str(tmp_path / "predictions.csv"))
    raw = pd.read_csv(tmp_path / "predictions.csv", dtype=str, keep_default_na=False)
    assert raw["true_label"].tolist() == ["'=1+2", "'+x", "'-2+3", "'@SUM(A1)", "'\tpad", "-1", "+2.5e3",
                                          "''quoted", "plain", "'-"]
    assert raw["predicted_value"].tolist()[:2] == ["-0.5", "-1.5"]  # numbers stay numbers
    back = read_output_csv(str(tmp_path / "predictions.csv"))
    pd.testing.assert_frame_equal(back, table)


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory):
    """A tiny training on the demo images whose class names are spreadsheet formulas, then predict."""
    base = tmp_path_factory.mktemp("crafted")
    table = pd.read_csv(DEMO_CSV)
    table["label"] = table["label"].map(CRAFTED)
    table.to_csv(base / "meta.csv", index=False)
    assert image_learner_cli.main([
        "--csv-file", str(base / "meta.csv"), "--image-zip", DEMO_ZIP, "--output-dir", str(base / "train"),
        "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]) == 0
    assert image_learner_cli.main(["predict", "--model", str(base / "train" / "trained_model.zip"), "--image-zip",
                                   DEMO_ZIP, "--csv-file", str(base / "meta.csv"), "--output-dir",
                                   str(base / "predict")]) == 0
    return base


@pytest.mark.parametrize("run", ["train", "predict"])
def test_formula_class_names_are_neutralised_in_predictions_csv(crafted_run, run):
    path = crafted_run / run / "predictions.csv"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    dangerous = re.compile(r"^[=+\-@\t\r]")
    for column in ("true_label", "predicted_label"):
        cells = set(raw[column])
        assert not {c for c in cells if dangerous.match(c) and c != "-1"}, (column, cells)
    assert {"'=1+2", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", "''quoted"} <= set(raw["true_label"])
    assert "-1" in set(raw["true_label"])
    from image_learner.data.input_utils import read_output_csv

    assert set(read_output_csv(str(path))["true_label"]) == set(CRAFTED.values())
    assert {c for c in raw.columns if c.startswith("prob_")} == {f"prob_{c}" for c in CRAFTED.values()}
    metrics = _strict_json(crafted_run / run / "metrics.json")
    assert {row["class"] for row in metrics["test"]["per_class"]} == set(CRAFTED.values())
    report = (crafted_run / run / "report.html").read_text()
    assert "@SUM(A1)" in report and "&#39;@SUM(A1)" not in report  # the report reads the names back exactly


def _zip_with_a_bad_image(path, good: int):
    members = {f"images/ok{i}.png": png_bytes(i) for i in range(good)}
    members["images/broken.png"] = b"not an image at all"
    return make_zip(path, members)


def test_predict_applies_trainings_unreadable_image_rule(tmp_path, capsys):
    """1 bad of 2 is over the 5% limit in both; the message is the one rule's (image_check)."""
    images = _zip_with_a_bad_image(tmp_path / "images.zip", good=1)
    code = image_learner_cli.main(["predict", "--model", os.path.join(TEST_DATA, "tiny_model.zip"), "--image-zip",
                                   images, "--output-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "1 of 2 images cannot be used (more than 5%): images/broken.png" in err


def test_the_unreadable_image_rule():
    from image_learner.data import image_check
    from image_learner.errors import InputError

    assert image_check.unreadable_images_note({}, 10) is None
    assert image_check.unreadable_images_note({"a.png": "truncated"}, 20) == \
        "1 unreadable image(s) skipped: a.png: truncated"
    with pytest.raises(InputError, match=r"^2 of 20 images cannot be used \(more than 5%\)"):
        image_check.unreadable_images_note({"a.png": "x", "b.png": "y"}, 20)
    assert image_check.unreadable_images_note({"a.png": "x", "b.png": "y"}, 20, max_fraction=0.1) is not None
    for module in ("image_learner/data/dataset_prep.py", "image_learner/model/predictor.py"):  # neither repeats the fraction or the message
        source = open(os.path.join(ROOT, module)).read()
        assert "unreadable_images_note(" in source and "cannot be used" not in source


def _runtime_sources() -> dict:
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "image_learner", "**", "*.py"),
                                                              recursive=True)
    return {path: open(path).read() for path in paths}


def test_every_top_level_function_and_class_is_used():
    """Dead code (input_utils.remove_tree was): each top-level definition of a runtime module is named
    somewhere in the runtime code other than where it is defined."""
    sources = _runtime_sources()
    assert len(sources) > 20
    unused = []
    for path, text in sources.items():
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                word = re.compile(rf"\b{node.name}\b")
                if sum(len(word.findall(other)) for other in sources.values()) < 2:
                    unused.append(f"{os.path.basename(path)}:{node.name}")
    assert unused == []


def test_readme_states_the_measured_gpu_throughput():
    readme = open(os.path.join(ROOT, "README.md")).read()
    benchmarks = open(os.path.join(ROOT, "BENCHMARKS.md")).read()
    assert "not measured yet" not in readme
    paragraph = readme[readme.index("GPU throughput"):][:600]
    assert "H200" in paragraph and "H200" in benchmarks
    for number in ("215", "130", "0.43", "0.62", "5.7 min", "10.4 s", "362 images/s"):  # BENCHMARKS.md's figures
        assert number in paragraph and number in benchmarks, number
    assert re.search(r"\| bfloat16 \| ours \(all four changes\) \| 215\.4 \| \*\*0\.43\*\*", benchmarks)
    assert re.search(r"\| float32 \| ours \| 130\.2 .*\| \*\*0\.62\*\*", benchmarks)
