"""--preset: the bundles, what the command line overrides, and how a run records it (no training here
but one tiny run)."""

import json
import os
import subprocess
import sys

import pytest

import image_learner_cli
from image_learner import run_request
from image_learner.errors import InputError
from image_learner.evaluation import class_decision
from image_learner.training import ludwig_config, presets
from conftest import ROOT


def _request(*extra):
    args = image_learner_cli.build_parser().parse_args(
        ["--csv-file", "m.csv", "--image-zip", "i.zip", "--output-dir", "out", *extra])
    return run_request.from_args(args)


def test_fast_is_the_long_standing_defaults():
    request = _request()
    opts = request.training
    assert (opts.epochs, opts.early_stop, opts.learning_rate, opts.lr_schedule) == (30, 5, 0.001, "constant")
    assert (opts.augmentation, opts.class_weights, opts.tta) == ("random_horizontal_flip", "none", "none")
    assert opts.class_decision == "argmax"
    assert (request.data.cross_validation, request.data.hold_out_test, request.data.folds_optional) == (0, False,
                                                                                                        True)
    assert request.preset == ("fast", presets.PRESET_OPTIONS)


def test_best_sets_its_options_and_typed_ones_win():
    request = _request("--preset", "best", "--epochs", "3", "--tta", "flips")
    opts = request.training
    assert (opts.epochs, opts.tta) == (3, "flips")  # typed
    assert (opts.early_stop, opts.learning_rate, opts.lr_schedule, opts.class_weights) == (0, 0.0003, "cosine",
                                                                                           "balanced")
    assert ludwig_config.parse_augmentation(opts.augmentation) == ["dihedral", "resized_crop", "color_jitter"]
    assert opts.class_decision == "balanced"
    assert (request.data.cross_validation, request.data.hold_out_test) == (3, True)
    assert request.data.folds_optional  # the preset's folds, not typed ones
    assert request.preset[0] == "best"
    assert "epochs" not in request.preset[1] and "tta" not in request.preset[1]
    assert "learning_rate" in request.preset[1]


def test_typed_folds_are_the_users_and_must_fit():
    request = _request("--preset", "best", "--cross-validation", "5", "--no-hold-out-test", "--class-decision",
                       "argmax")
    assert (request.data.cross_validation, request.data.hold_out_test, request.data.folds_optional) == (5, False,
                                                                                                        False)
    assert request.training.class_decision == "argmax"
    assert _request("--preset", "best", "--cross-validation", "0").data.cross_validation == 0


def test_best_averages_the_dihedral_views_unless_told_otherwise():
    values, from_preset = presets.resolve("best", {})
    assert values["tta"] == "dihedral" and "tta" in from_preset
    assert presets.resolve("fast", {})[0]["tta"] == "none"


def test_a_typed_value_equal_to_the_presets_still_counts_as_typed():
    values, from_preset = presets.resolve("best", {"early_stop": 0, "augmentation": "none"})
    assert values["early_stop"] == 0 and values["augmentation"] == "none"  # 0 and "none" are values, not unset
    assert "early_stop" not in from_preset and "augmentation" not in from_preset


def test_every_preset_sets_every_option_and_each_value_is_valid():
    for name, settings in presets.PRESETS.items():
        assert tuple(settings) == presets.PRESET_OPTIONS, name
        ludwig_config.parse_augmentation(settings["augmentation"])  # raises on an unknown name
        assert settings["lr_schedule"] in ludwig_config.LR_SCHEDULES
        assert settings["class_weights"] in ("none", "balanced")
        assert settings["class_decision"] in class_decision.RULES
        assert settings["cross_validation"] == 0 or settings["cross_validation"] >= 2
        assert set(presets.DATA_OPTIONS) <= set(settings)


def test_unknown_preset_is_refused():
    with pytest.raises(InputError, match="--preset 'huge' is unknown; choose from fast, best"):
        presets.resolve("huge", {})


def test_the_presets_class_weights_leave_a_regression_but_typed_ones_do_not():
    opts = ludwig_config.TrainingOptions("m", 32, class_weights="balanced")
    assert presets.fit_to_task(opts, ("class_weights",), "multiclass") is None and opts.class_weights == "balanced"
    assert "classification only" in presets.fit_to_task(opts, ("class_weights",), "regression")
    assert opts.class_weights == "none"
    typed = ludwig_config.TrainingOptions("m", 32, class_weights="balanced")
    assert presets.fit_to_task(typed, (), "regression") is None and typed.class_weights == "balanced"


@pytest.mark.parametrize("task, kept", [("multiclass", "balanced"), ("binary", "argmax"), ("regression", "argmax")])
def test_the_presets_balanced_decision_is_for_three_or_more_classes(task, kept):
    opts = ludwig_config.TrainingOptions("m", 32, class_decision="balanced")
    note = presets.fit_to_task(opts, ("class_decision",), task)
    assert opts.class_decision == kept
    assert (note is None) == (task == "multiclass")
    if task == "binary":
        assert note == ("the preset's balanced decision rule applies to three or more classes: the binary task's "
                        "own tuned threshold instead")
    typed = ludwig_config.TrainingOptions("m", 32, class_decision="balanced")
    assert presets.fit_to_task(typed, (), task) is None and typed.class_decision == "balanced"  # refused later


def test_describe_names_the_presets_values_and_the_typed_options():
    values, from_preset = presets.resolve("best", {"epochs": 2})
    values["augmentation"] = ludwig_config.parse_augmentation(values["augmentation"])
    line = presets.describe("best", from_preset, values)
    assert line.startswith("preset best: early_stop 0, learning_rate 0.0003, lr_schedule cosine, augmentation "
                           "dihedral,resized_crop,color_jitter, class_weights balanced, tta dihedral, "
                           "class_decision balanced, cross_validation 3, hold_out_test True")
    assert line.endswith("; from the command line: epochs")


def test_help_states_each_presets_value_instead_of_none():
    text = image_learner_cli.build_parser().format_help()
    assert "(default: set by --preset: fast 30, best 12)" in text
    assert "(default: None)" not in text.split("--epochs EPOCHS")[1].split("--validation-metric")[0]


def test_best_on_a_regression_runs_without_class_weights_and_records_the_preset(tmp_path):
    """A tiny regression run with --preset best: no class weights and no balanced decision (the preset's are
    for classes); its 3 folds with the random split's test rows held out; the log line and run_summary.json
    say which options came from the preset."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "image_learner_cli.py"), "--csv-file",
         os.path.join(ROOT, "test-data", "ham10000_demo_age.csv"), "--image-zip",
         os.path.join(ROOT, "test-data", "ham10000_demo_images.zip"), "--output-dir", str(out),
         "--target-column", "age", "--task", "regression", "--model-name", "test_efficientnet",
         "--no-use-pretrained", "--image-size", "32", "--preset", "best", "--epochs", "1", "--no-audit",
         "--no-report", "--preprocessing-workers", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    training = summary["training"]
    assert training["preset"] == "best" and "epochs" not in training["options_from_preset"]
    assert training["class_weights"] == "none" and training["lr_schedule"] == "cosine"
    assert training["learning_rate"] == 0.0003 and training["class_decision"] == "argmax"
    assert summary["split"]["folds"] == 3 and "held out as the test set" in summary["split"]["method"]
    assert summary["dataset"]["split_counts"]["test"] > 0  # the random split's test share
    log = (out / "training_log.txt").read_text()
    assert ("note: the preset's class weights apply to classification only: none for this regression; the preset's "
            "balanced decision rule applies to three or more classes: the regression task's own predicted value "
            "instead") in log
    assert "preset best: early_stop 0, learning_rate 0.0003" in log and "cross_validation 3, hold_out_test True" in log
    assert "fold 3 of 3" in log


def test_hold_out_test_takes_no_value(capsys):
    with pytest.raises(SystemExit) as stop:
        _request("--hold-out-test=yes")
    assert stop.value.code == 2
    assert "argument --hold-out-test/--no-hold-out-test: ignored explicit argument 'yes'" in capsys.readouterr().err
