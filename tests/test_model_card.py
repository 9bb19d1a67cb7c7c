"""MODEL_CARD.md (model_card.build_card, pure): the facts of a run summary, the metrics with their intervals and
what they were computed on, the weights' origin without a path, and user text that cannot break the Markdown."""

import copy
import re

import pytest

from image_learner.errors import InputError
from image_learner.model import model_card

HOSTILE = "evil|class\n# Heading <script>alert(1)</script> [x](http://e) `code` *b* $m$ &lt;"


@pytest.fixture
def summary():
    """A run summary shaped like pipeline._run_stages writes it (trimmed to what the card reads)."""
    return {
        "tool": {"name": "image-learner", "version": "0.1.0"},
        "inputs": {"csv_file": "meta.csv", "image_zip": "images.zip", "data_licence": "CC BY-NC 4.0"},
        "columns": {"image": "image_path", "label": "dx", "sample_id": "lesion_id", "split": None},
        "target_column": "dx", "task": "multiclass", "task_reason": "auto: column 'dx' has 3 labels",
        "classes": ["bcc", "mel", "nv"], "target_scaling": None, "positive_label": None, "threshold": None,
        "dataset": {"matched_rows": 60, "split_counts": {"train": 42, "validation": 6, "test": 12},
                    "class_counts": {"train": {"bcc": 10, "mel": 12, "nv": 20},
                                     "validation": {"bcc": 1, "mel": 2, "nv": 3},
                                     "test": {"bcc": 3, "mel": 4, "nv": 5}}},
        "split": {"seed": 7, "method": "random, stratified by label, seeded",
                  "grouped_by": ["column 'lesion_id'", "leakage guard (flips/rotations/duplicates)"]},
        "leakage": {"guard": True, "max_distance": 20, "duplicate_groups": 4, "images_in_duplicate_groups": 9},
        "model": {"name": "efficientnet_lite0", "pretrained": True, "fine_tune": True, "image_size": 224,
                  "weights_source": "local file efficientnet_lite0.safetensors"},
        "training": {"pretrained_weights": "/home/someone/private/efficientnet_lite0.safetensors", "epochs": 10,
                     "epochs_run": 6, "best_epoch": 3, "best_epoch_chosen_by": "highest validation balanced accuracy",
                     "early_stop": 3, "batch_size": 32, "learning_rate": 0.001, "lr_schedule": "cosine",
                     "augmentation": ["random_horizontal_flip"], "class_weights": "balanced", "random_seed": 7,
                     "device": "cpu", "mixed_precision": "off", "validation_metric": "balanced_accuracy"},
        "versions": {"ludwig": "0.17.10"},
        "metrics": {"test": {"n": 12, "accuracy": 0.75, "balanced_accuracy": 0.7111, "expected_calibration_error": 0.08,
                             "ci95": {"accuracy": [0.5, 0.9167], "balanced_accuracy": [0.45, 0.95]}}},
    }


def _section(card, title):
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_card_states_the_runs_facts(summary):
    card = model_card.build_card(summary, "CC BY-NC 4.0")
    assert card.startswith("# Model card: efficientnet\\_lite0, multiclass image model\n")
    assert [line for line in card.splitlines() if line.startswith("#")] == [
        "# Model card: efficientnet\\_lite0, multiclass image model", "## Model", "## Data", "## Split and groups",
        "## Metrics", "## Intended use and limits"]
    model = _section(card, "Model")
    assert "timm efficientnet\\_lite0, input 224×224 RGB, fine-tuned" in model
    assert "Weights' origin before training: local file efficientnet\\_lite0.safetensors" in model
    assert "/home/someone" not in card  # the weights' path never travels with the model
    assert "| epochs run | 6 |" in model and "| kept epoch | 3 |" in model and "| schedule | cosine |" in model
    assert "Classes, in the order of the probability columns: bcc, mel, nv" in model
    data = _section(card, "Data")
    assert "- Licence of the data, as the user stated it: CC BY-NC 4.0" in data
    assert "| mel | 12 | 2 | 4 |" in data and "| all | 42 | 6 | 12 |" in data
    split = _section(card, "Split and groups")
    assert "seed 7" in split and "column 'lesion\\_id', leakage guard" in split
    assert "Sample id column: lesion\\_id" in split and "4 duplicate groups holding 9 images" in split
    metrics = _section(card, "Metrics")
    assert ("Computed on the held-out test rows, used neither for training nor to choose the kept epoch (12 rows)"
            in metrics)
    assert "(1,000 resamples, seed 7)" in metrics
    assert "- balanced accuracy: 0.711 (95% interval 0.450 to 0.950)" in metrics
    assert "- expected calibration error: 0.080" in metrics
    use = _section(card, "Intended use and limits")
    assert "not a medical device" in use and "learned from 42 images of one collection" in use


def test_cross_validation_metrics_say_they_are_out_of_fold(summary):
    summary["metrics"] = {"cross_validation": {
        "k": 3, "mean": {"balanced_accuracy": 0.6}, "sd": {"balanced_accuracy": 0.05},
        "pooled": {"n": 48, "balanced_accuracy": 0.62, "ci95": {"balanced_accuracy": [0.5, 0.74]}}}}
    summary["cross_validation"] = {"k": 3, "kept_epochs": [2, 3, 3], "final_epochs": 3,
                                   "fold_sizes": [{"fold": k, "train": 28, "validation": 4, "predicted": 16}
                                                  for k in (1, 2, 3)],
                                   "final_epochs_rule": "median kept epoch across folds, halves rounded up",
                                   "final_training_rows": 48}
    summary["dataset"]["split_counts"] = {"train": 48, "validation": 0, "test": 0}
    summary["dataset"]["class_counts"] = {f"fold {k}": {"bcc": 4, "mel": 5, "nv": 7} for k in (1, 2, 3)}
    card = model_card.build_card(summary)
    metrics = _section(card, "Metrics")
    assert metrics.strip().startswith("Computed on the pooled out-of-fold predictions of 3-fold cross-validation")
    assert "(48 rows)" in metrics and "- balanced accuracy: 0.620 (95% interval 0.500 to 0.740)" in metrics
    assert "balanced accuracy 0.600 ± 0.050" in metrics and "held-out test rows" not in metrics
    assert ("3 folds (fold 1: 28 train, 4 validation, 16 predicted; fold 2: 28 train" in card
            and "kept epochs 2, 3, 3; final model trained for 3 epochs" in card and "learned from 48 images" in card)
    data = _section(card, "Data")
    assert "Rows per split (cross-validation: per fold, the rows it predicted):" in data
    assert "| class | fold 1 | fold 2 | fold 3 |" in data and "| nv | 7 | 7 | 7 |" in data
    assert "| all | 16 | 16 | 16 |" in data
    assert "as the user stated it: not stated" in card


def test_a_binary_threshold_and_a_regression_target_are_stated(summary):
    binary = copy.deepcopy(summary)
    binary.update(task="binary", classes=["benign", "malignant"], positive_label="malignant", threshold=0.37,
                  threshold_policy="tuned on the validation split for the highest Youden's J")
    card = model_card.build_card(binary)
    assert "Decision threshold on P(malignant): 0.370, tuned on the validation split" in card
    assert "or the decision threshold" in _section(card, "Metrics")
    regression = copy.deepcopy(summary)
    regression.update(task="regression", classes=[], target_scaling={"mean": 51.5, "std": 16.25})
    regression["metrics"]["test"] = {"n": 12, "mae": 9.5, "ci95": {"mae": [7.0, 12.25]}}
    card = model_card.build_card(regression)
    assert "a number (regression)" in card and "mean 51.500, sd 16.250" in card
    assert "- mae: 9.500 (95% interval 7.000 to 12.250)" in card and "Classes, in the order" not in card
    assert "| class | train | validation | test |\n|---|---|---|---|\n| all | 42 | 6 | 12 |" in card


def _cells(row):
    return re.split(r"(?<!\\)\|", row)[1:-1]


def test_user_text_cannot_break_the_markdown(summary):
    summary["classes"] = ["bcc", HOSTILE, "nv"]
    for split in summary["dataset"]["class_counts"].values():
        split[HOSTILE] = split.pop("mel")
    summary["target_column"] = HOSTILE
    card = model_card.build_card(summary, HOSTILE)
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert len(headings) == 6  # the newline and the "#" inside the text opened no heading
    hostile_lines = [line for line in card.splitlines() if "evil" in line]
    assert len(hostile_lines) == 4  # classes, target, licence, counts table
    for line in hostile_lines:  # no tag, link, code, emphasis, maths or entity left unescaped
        assert not re.search(r"(?<!\\)[<>\[\]`*$&_]", line), line
    escaped = ("evil\\|class \\# Heading \\<script\\>alert(1)\\</script\\> \\[x\\](http://e) \\`code\\` \\*b\\* "
               "\\$m\\$ \\&lt;").replace("\\#", "#")
    assert f"- Licence of the data, as the user stated it: {escaped}" in card
    rows = [line for line in _section(card, "Data").splitlines() if line.startswith("|")]
    assert {len(_cells(row)) for row in rows} == {4}  # the "|" in the class name split no cell
    assert _cells(rows[3])[0].strip() == escaped


def test_md_text_neutralises_control_and_bidi_characters():
    assert model_card.md_text("a\r\n\tb\u202ec\x00d") == "a b c d"
    assert model_card.md_text("x_y*z") == "x\\_y\\*z"


def test_the_licence_option_is_one_line_and_capped():
    assert model_card.check_licence("  CC BY\n4.0 ") == "CC BY 4.0"
    assert model_card.check_licence("") == "not stated"
    with pytest.raises(InputError, match="--data-licence is 501 characters long; at most 500"):
        model_card.check_licence("x" * 501)
