"""--audit on a tiny real training (timm's test_efficientnet, 32 px, 1 epoch, the bundled demo set):
label_issues.csv from held-out rows only, embeddings.csv with the backbone's width, the report's section."""

import json

import pandas as pd
import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY]) == 0
    return out


def test_label_issues_score_held_out_rows_only(run_dir):
    predictions = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False, dtype=str)
    issues = pd.read_csv(run_dir / "label_issues.csv", keep_default_na=False, dtype={"image": str})
    held_out = predictions[predictions["split"].isin(["validation", "test"])]
    assert sorted(issues["image"]) == sorted(held_out["image"])
    assert issues["quality_score"].is_monotonic_increasing
    first = held_out.set_index("image").loc[issues["image"].iloc[0]]
    assert abs(issues["given_label_probability"].iloc[0] - float(first[f"prob_{first['true_label']}"])) < 1e-6
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["audit"]["label_issues"]["rows"] == len(held_out)


def test_embeddings_one_row_per_image_with_the_backbone_width(run_dir):
    import timm

    width = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).num_features
    table = pd.read_csv(run_dir / "embeddings.csv", keep_default_na=False, dtype={"image": str})
    predictions = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False, dtype=str)
    assert sorted(table["image"]) == sorted(predictions["image"])
    assert [c for c in table.columns if c.startswith("f")] == [f"f{k}" for k in range(width)]
    assert table[[f"f{k}" for k in range(width)]].std().max() > 0  # the features vary between images


def test_report_has_the_audit_section(run_dir):
    html = (run_dir / "report.html").read_text()
    assert 'id="audit"' in html and "Suspected label errors" in html and 'id="plot-data-map"' in html
    assert "suspicion" in html and "nothing was relabelled" in html


def test_no_audit_writes_neither_file(tmp_path):
    out = tmp_path / "run"
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, "--no-audit", "--no-report"]) == 0
    assert not (out / "label_issues.csv").exists() and not (out / "embeddings.csv").exists()
    assert json.loads((out / "run_summary.json").read_text())["audit"] == {"skipped": "--no-audit"}


def test_a_bad_audit_value_exits_2_naming_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                str(tmp_path / "o"), "--audit=yes"])
    assert stop.value.code == 2 and "--audit" in capsys.readouterr().err
