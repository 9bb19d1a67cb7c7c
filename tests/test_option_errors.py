"""Every option added for cross-validation, regression, the selection metric, the threshold and
data-parallel training refuses a bad value through the command line: exit 2, a message naming the option,
no traceback and no outputs left behind (--threshold on a multiclass task: test_end_to_end; a --task or class
weights that do not fit the column: test_regression)."""

import pytest

import image_learner_cli
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA

AGE_CSV = f"{TEST_DATA}/ham10000_demo_age.csv"
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.mark.parametrize("csv, extra, message", [
    (DEMO_CSV, ["--cross-validation", "1"], "--cross-validation needs at least 2 folds (0: off), got 1"),
    (DEMO_CSV, ["--cross-validation", "20", "--sample-id-column", "lesion_id"],
     "--cross-validation 20 needs at least 20 groups of every class"),
    (DEMO_CSV, ["--validation-metric", "mae"], "--validation-metric 'mae' does not apply to a multiclass task"),
    (AGE_CSV, ["--target-column", "age", "--validation-metric", "roc_auc"],
     "--validation-metric 'roc_auc' does not apply to a regression task"),
    (DEMO_CSV, ["--threshold", "1.5"], "--threshold must be between 0 and 1 (exclusive), got 1.5"),
    (DEMO_CSV, ["--distributed", "ddp", "--num-workers", "1"], "2 or more"),
    (DEMO_CSV, ["--num-workers", "2"], "needs --distributed ddp"),
    (DEMO_CSV, ["--data-licence", "x" * 501], "--data-licence is 501 characters long; at most 500"),
])
def test_a_bad_value_exits_2_naming_the_option_and_leaves_nothing(tmp_path, capsys, csv, extra, message):
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag, value", [
    ("--task", "ordinal"), ("--validation-metric", "precision"), ("--threshold-metric", "accuracy"),
    ("--distributed", "ray"), ("--cross-validation", "five"), ("--threshold", "half"), ("--tta", "rotations"),
])
def test_an_unknown_choice_or_a_non_number_exits_2_naming_the_option(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid" in err and repr(value) in err and "Traceback" not in err
    assert not out.exists()


def test_threshold_and_threshold_metric_together_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                str(tmp_path / "out"), "--threshold", "0.3", "--threshold-metric", "f1"])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
