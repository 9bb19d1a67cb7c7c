"""One rule for label text: kept exactly as written (stripped); only an empty cell is a missing label.
Labels that look like a spreadsheet's "no value" are classes (with a warning), and every table the tool
writes is re-read with them intact (pandas would turn them into NaN by default)."""

import json

import pandas as pd
import pytest

from image_learner.data import dataset_prep
from image_learner.model import predictor
import report_builder
from conftest import png_bytes
from image_learner.data.input_utils import InputError, label_text, missing_value_like, read_output_csv

MARKERS = ["N/A", "#N/A", "n/a", "<NA>", "NaN", "None", "null"]


def _prepare(tmp_path, labels):
    root = tmp_path / "images"
    root.mkdir(parents=True)
    names = [f"img{i}.png" for i in range(len(labels))]
    for i, name in enumerate(names):
        (root / name).write_bytes(png_bytes(i))
    pd.DataFrame({"image_path": names, "label": labels}).to_csv(tmp_path / "meta.csv", index=False)
    return dataset_prep.prepare(str(tmp_path / "meta.csv"), str(root), names, dataset_prep.DataOptions(),
                                converted_dir=str(tmp_path / "conv"))


@pytest.mark.parametrize("marker", MARKERS)
def test_a_label_spelled_like_a_missing_value_is_a_class_with_a_warning(tmp_path, marker):
    data = _prepare(tmp_path, [marker, "nv"] * 10)
    assert data.classes == sorted([marker, "nv"])
    assert (data.table["label"] == marker).sum() == 10
    assert data.dataset["class_counts"]["test"][marker] == 2
    warning = next(w for w in data.warnings if "missing-value marker" in w)
    assert warning.startswith(f"class {marker!r} (10 images) is spelled like a missing-value marker")
    assert "remove them from the CSV" in warning


@pytest.mark.parametrize("marker", MARKERS)
def test_tables_the_tool_wrote_are_re_read_with_the_label_intact(tmp_path, marker):
    predictions = pd.DataFrame({"image": ["a.png", "b.png"], "image_file": ["a.png", "b.png"],
                                "split": ["test", "test"], "true_label": [marker, "01"],
                                "predicted_label": ["01", marker], f"prob_{marker}": [0.25, 0.75],
                                "prob_01": [0.75, 0.25], "sample_id": ["", "p1"], "duplicate_group": [0, 1]})
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "run_summary.json").write_text(json.dumps({"classes": [marker, "01"]}))
    for table in (read_output_csv(str(tmp_path / "predictions.csv")), report_builder._read_run(str(tmp_path))[1]):
        assert table["true_label"].tolist() == [marker, "01"]
        assert table["predicted_label"].tolist() == ["01", marker]
        assert table["sample_id"].tolist() == ["", "p1"]
        assert table[f"prob_{marker}"].tolist() == [0.25, 0.75]


def test_only_an_empty_cell_is_a_missing_label():
    assert label_text(pd.Series([" N/A ", "None", "-"]), "label").tolist() == ["N/A", "None", "-"]
    with pytest.raises(InputError, match=r"label column 'dx' is empty on CSV line\(s\) 5, 9"):
        label_text(pd.Series(["a", "  ", "b", ""]), "dx", csv_lines=[2, 5, 7, 9])
    assert missing_value_like(["N/A", "nv", "null", "?", "unknown"]) == ["N/A", "null", "?"]


def test_prediction_keeps_true_labels_as_written_and_names_empty_ones(tmp_path):
    pd.DataFrame({"image_path": ["a.png", "b.png"], "label": ["N/A", "null"]}).to_csv(tmp_path / "m.csv", index=False)
    request = predictor.PredictRequest("model.zip", "images.zip", "out", csv_file=str(tmp_path / "m.csv"))
    table, _, _ = predictor._images_to_predict(request, str(tmp_path), ["a.png", "b.png"])
    assert table["true_label"].tolist() == ["N/A", "null"]
    pd.DataFrame({"image_path": ["x.png", "a.png", "b.png"], "label": ["c", "N/A", ""]}).to_csv(tmp_path / "m.csv",
                                                                                                index=False)
    with pytest.raises(InputError, match=r"empty on CSV line\(s\) 4"):
        predictor._images_to_predict(request, str(tmp_path), ["a.png", "b.png"])
