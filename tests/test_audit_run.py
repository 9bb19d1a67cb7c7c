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


@pytest.mark.parametrize("bad", ["--audit=yes", "--no-audit=1", "--audit=no"])
def test_a_bad_audit_value_exits_2_naming_the_option(tmp_path, capsys, bad):
    """--audit and --no-audit take no value: a value is refused, naming the option, before anything runs."""
    with pytest.raises(SystemExit) as stop:
        image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                str(tmp_path / "o"), bad])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --audit/--no-audit: ignored explicit argument" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_the_map_marks_unhealthy_images_and_duplicates_from_data_health():
    """data_health.csv's issues mark the map (and its hover text); label suspects are marked apart."""
    import numpy as np

    from image_learner.report import report_audit

    rng = np.random.default_rng(0)
    n = 30
    table = pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "split": "train", "label": ["a", "b"] * 15})
    table = pd.concat([table, pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"f{k}" for k in range(8)])], axis=1)
    health = pd.DataFrame({"image": table["image"], "issues": [""] * n})
    health.loc[[1, 2], "issues"] = "dark"
    health.loc[3, "issues"] = "blurry,near_duplicates"
    health.loc[[4, 5], "issues"] = "near_duplicates"
    issues = pd.DataFrame({"image": ["img7.png", "img8.png"], "flagged": ["True", "False"]})
    html, facts = report_audit.data_map(table, issues, 0, health)
    assert (facts["shown"], facts["total"]) == (30, 30)
    assert (facts["suspects_marked"], facts["unhealthy_marked"], facts["duplicates_marked"]) == (1, 3, 3)
    assert "img3.png (train)\\u003cbr\\u003eblurry,near_duplicates" in html and "unhealthy image" in html
    _, without = report_audit.data_map(table, issues, 0, None)
    assert (without["unhealthy_marked"], without["duplicates_marked"]) == (0, 0)


def test_the_cap_keeps_every_marked_image():
    import numpy as np

    from image_learner.evaluation import embeddings

    keep = np.zeros(5000, bool)
    keep[[3, 4000, 4999]] = True
    rows = embeddings.sample_rows(5000, keep, cap=100, seed=1)
    assert len(rows) == 100 and {3, 4000, 4999} <= set(rows) and len(set(rows)) == 100


def test_a_report_rebuilt_from_a_run_without_an_audit_record_says_so(tmp_path):
    import report_builder
    from test_report import write_run

    run = write_run(str(tmp_path / "run"), ["akiec", "mel", "nv"])
    html = open(report_builder.build_report(run), encoding="utf-8").read()
    assert 'id="audit"' in html and "this run has no audit record" in html
    assert "Scored on" not in html


def test_the_map_draws_its_points_in_a_browser(run_dir, tmp_path):
    """Chromium, headless and offline (as tests/test_report.py renders): every map point is an SVG path,
    so the map also shows where WebGL is unavailable."""
    import subprocess

    from test_report import CHROMIUM, ROOT, rendered_dom
    import os

    subprocess.run(["bash", os.path.join(ROOT, "scripts", "ensure_chromium.sh")], check=True)
    dom = rendered_dom(CHROMIUM, str(run_dir / "report.html"), tmp_path)
    start = dom.index('id="plot-data-map"')
    section = dom[start:dom.index('<h2 id="run"', start)]
    images = len(pd.read_csv(run_dir / "embeddings.csv", usecols=["image"]))
    assert section.count('class="point"') >= images  # each image a point (marked ones once more)
