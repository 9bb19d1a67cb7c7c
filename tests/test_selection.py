"""--validation-metric (the kept epoch, early stopping) and the binary threshold options, without training."""

import pandas as pd
import pytest

from image_learner.training import ludwig_config
from image_learner.training import ludwig_trainer
from image_learner import run_request
from image_learner.errors import InputError
from image_learner.training.ludwig_config import VALIDATION_METRICS, TrainingOptions, build_ludwig_config

LUDWIG_TYPE = {"multiclass": "category", "binary": "binary", "regression": "number"}


def _options(**kwargs):
    return TrainingOptions(model_name="resnet18", image_size=64, use_pretrained=False, **kwargs)


@pytest.mark.parametrize("task, name, ludwig_name", [
    ("multiclass", "balanced_accuracy", "accuracy"), ("multiclass", "accuracy", "accuracy_micro"),
    ("multiclass", "macro_f1", "macro_f1"), ("multiclass", "roc_auc", "roc_auc"), ("multiclass", "loss", "loss"),
    ("binary", "roc_auc", "roc_auc"), ("binary", "balanced_accuracy", "balanced_accuracy"),
    ("binary", "accuracy", "accuracy"), ("binary", "macro_f1", "macro_f1"), ("binary", "loss", "loss"),
    ("multiclass", "auto", "accuracy"), ("binary", "auto", "roc_auc"),
])
def test_config_uses_the_chosen_metric(task, name, ludwig_name):
    cfg = build_ludwig_config(_options(validation_metric=name), task)
    assert cfg["trainer"]["validation_metric"] == ludwig_name
    assert cfg["trainer"]["validation_field"] == "label"


def test_every_metric_is_one_ludwig_tracks_per_epoch():
    """Each choice names a metric Ludwig computes for that output type (ours registered through its registry),
    and Ludwig's own config check accepts it: no choice can fall back silently to another metric."""
    ludwig_trainer.register_with_ludwig()
    from ludwig.modules.metric_registry import get_metric_names_for_type, get_metric_objective

    for task, choices in VALIDATION_METRICS.items():
        tracked = get_metric_names_for_type(LUDWIG_TYPE[task])
        for name, (ludwig_name, _, higher_is_better) in choices.items():
            assert ludwig_name == "loss" or ludwig_name in tracked, (task, name)
            assert get_metric_objective(ludwig_name) == ("maximize" if higher_is_better else "minimize")
    for task in ("multiclass", "binary"):
        for name in VALIDATION_METRICS[task]:
            rendered = ludwig_trainer.rendered_config(build_ludwig_config(_options(validation_metric=name), task))
            assert rendered["trainer"]["validation_metric"] == VALIDATION_METRICS[task][name][0]


def test_unknown_or_inapplicable_metric_is_an_input_error_naming_the_choices():
    with pytest.raises(InputError, match=r"--validation-metric 'rmse' does not apply to a multiclass task; "
                                         r"choose from auto, accuracy, roc_auc, balanced_accuracy, macro_f1, loss"):
        build_ludwig_config(_options(validation_metric="rmse"), "multiclass")
    with pytest.raises(InputError, match="--validation-metric 'mae' does not apply to a binary task"):
        ludwig_config.resolve_validation_metric("mae", "binary")
    assert ludwig_config.resolve_validation_metric("auto", "regression") == "mae"
    request = run_request.RunRequest("a.csv", "b.zip", "out", None, _options(validation_metric="f2"))
    with pytest.raises(InputError, match="--validation-metric 'f2' is unknown; choose from auto, accuracy"):
        run_request.resolve_training_options(request)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold_metric": "precision"}, "--threshold-metric 'precision' is unknown; choose from youden, "
                                        "balanced_accuracy, f1, mcc"),
    ({"threshold": 1.0}, r"--threshold must be between 0 and 1 \(exclusive\), got 1.0"),
    ({"threshold": 0.0}, r"--threshold must be between 0 and 1"),
])
def test_bad_threshold_options(kwargs, message):
    request = run_request.RunRequest("a.csv", "b.zip", "out", None, _options(**kwargs))
    with pytest.raises(InputError, match=message):
        run_request.resolve_training_options(request)


def test_task_options_resolved_once_the_task_is_known():
    opts = _options(threshold=0.3)
    run_request.resolve_task_options(opts, "binary")
    assert (opts.validation_metric, opts.threshold) == ("roc_auc", 0.3)
    with pytest.raises(InputError, match="--threshold applies to binary tasks only; this is a multiclass task"):
        run_request.resolve_task_options(_options(threshold=0.3), "multiclass")
    opts = _options(threshold_metric="f1", validation_metric="macro_f1")
    run_request.resolve_task_options(opts, "multiclass")  # a note only: the Galaxy form always sends a policy
    assert (opts.validation_metric, opts.threshold_metric) == ("macro_f1", "youden")


def test_best_epoch_follows_the_metric_and_its_direction():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "validation_loss": [0.9, 0.5, 0.5, 0.7],
                            "validation_balanced_accuracy": [0.4, 0.5, 0.8, 0.8],
                            "validation_roc_auc": [0.6, 0.9, 0.7, 0.8], "validation_macro_f1": [0.1, 0.2, 0.3, 0.6],
                            "validation_mean_absolute_error": [3.0, 2.0, 1.5, 1.8],
                            "validation_r2": [0.1, 0.5, 0.4, 0.3]})
    best = ludwig_trainer.best_epoch_of
    assert best(history, "multiclass", "loss") == 2  # lowest; first of a tie (Ludwig needs a strict improvement)
    assert best(history, "multiclass", "balanced_accuracy") == 3  # highest; first of a tie
    assert best(history, "binary", "roc_auc") == 2
    assert best(history, "binary", "macro_f1") == 4
    assert best(history, "regression", "mae") == 3
    assert best(history, "regression", "r2") == 2
    assert best(history, "multiclass", "accuracy") == 4  # no such column (no validation split): the last epoch
