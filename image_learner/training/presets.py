"""Quality presets (``--preset``): named bundles of training settings, in the spirit of AutoGluon's presets.

``fast`` is the tool's long-standing defaults. ``best`` bundles the levers that the measurements kept
(BENCHMARKS.md, "Presets"; each chosen before its test, on validation rows or earlier runs, never on the test
rows it is reported on):

- a fine-tuning learning-rate policy: 3e-4 with one epoch of linear warm-up and cosine decay to 0 over 12
  epochs, all of which run (the kept epoch is still the best one by the validation metric); 0.001 with
  balanced weights peaked after one epoch in the issue's full-set run;
- balanced class weights (classification only: a regression keeps none), as skewed sets such as HAM10000
  (two thirds one class) otherwise learn to say the majority class;
- per-image augmentation: one of the 8 quarter-turn/mirror views, a random resized crop and colour jitter (a
  dermoscopy or microscopy image has no "up"); accuracy and ROC-AUC rose against Ludwig's per-batch flips;
- dihedral test-time augmentation over the views the model was trained on (on a model trained with
  horizontal flips only it had hurt). 8x the predict time;
- the balanced decision rule (multiclass only): the logit adjustment whose strength beats its noise on the
  out-of-fold rows, else the most probable class;
- 3-fold cross-validation with the test share of the split held out (the rows a single split with the same
  seed tests on): the decision rule is chosen on every non-test image's out-of-fold prediction instead of a
  10% validation split, and the delivered model is the refit on all non-test images (4 trainings). A set too
  small for 3 folds falls back to one split, with a warning.

On all 7,347 shared HAM10000 images (lesion-grouped, seed 42 and 43, 1,471 test images each, lite0 at 160
px) this reached balanced accuracy 0.731 / 0.727 with accuracy 0.824 / 0.812 (BENCHMARKS.md, "The
cross-validated recipe on a second split"). Left out because they did not help in their paired
measurements: metadata fusion, the fold ensemble (also K more model files), the search. The image size
stays the backbone's pretraining size (the measured best, "Image size").

An option given on the command line always wins over the preset's value; ``resolve`` says which options
came from the preset, and the run records both (run_summary.json ``training.preset``).
"""

from __future__ import annotations

from image_learner.errors import InputError

DEFAULT_PRESET = "fast"

# The options a preset sets, by their TrainingOptions names; the CLI leaves them unset (None) unless typed.
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"epochs": 30, "early_stop": 5, "learning_rate": 0.001, "lr_schedule": "constant",
             "augmentation": "random_horizontal_flip", "class_weights": "none", "tta": "none",
             "class_decision": "argmax", "cross_validation": 0, "hold_out_test": False},
    "best": {"epochs": 12, "early_stop": 0, "learning_rate": 0.0003, "lr_schedule": "cosine",
             "augmentation": "dihedral,resized_crop,color_jitter",
             "class_weights": "balanced", "tta": "dihedral",
             "class_decision": "balanced", "cross_validation": 3, "hold_out_test": True},
}
PRESET_OPTIONS = tuple(PRESETS[DEFAULT_PRESET])
DATA_OPTIONS = ("cross_validation", "hold_out_test")  # dataset_prep.DataOptions fields; the rest TrainingOptions


def resolve(preset: str | None, given: dict[str, object]) -> tuple[dict[str, object], tuple[str, ...]]:
    """The values of PRESET_OPTIONS: ``given`` (the command line's; None = not typed) over the preset's.

    Returns the values and the names of the options that came from the preset. An unknown preset name
    is an InputError listing the known ones."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise InputError(f"--preset {name!r} is unknown; choose from {', '.join(PRESETS)}")
    unknown = set(given) - set(PRESET_OPTIONS)
    if unknown:  # a programming error, not a user's: every preset option is in every preset
        raise ValueError(f"not preset options: {sorted(unknown)}")
    values = {option: given.get(option) if given.get(option) is not None else PRESETS[name][option]
              for option in PRESET_OPTIONS}
    return values, tuple(option for option in PRESET_OPTIONS if given.get(option) is None)


def fit_to_task(opts, from_preset: tuple[str, ...], task: str) -> str | None:
    """What a preset set that the task has no use for, dropped (in place) with a note: class weights for a
    regression, the balanced decision rule for two classes (their threshold is tuned) or a regression. A typed
    option is left for check_task_options to refuse. Returns the note to log, or None."""
    dropped = []
    if task == "regression" and "class_weights" in from_preset and opts.class_weights != "none":
        opts.class_weights = "none"
        dropped.append("class weights apply to classification only: none for this regression")
    if task != "multiclass" and "class_decision" in from_preset and opts.class_decision != "argmax":
        opts.class_decision = "argmax"
        dropped.append(f"balanced decision rule applies to three or more classes: the {task} task's own "
                       + ("tuned threshold" if task == "binary" else "predicted value") + " instead")
    return "; ".join(f"the preset's {d}" for d in dropped) or None


def describe(preset: str | None, from_preset: tuple[str, ...], values: dict[str, object]) -> str:
    """One log line: the preset and what it set, the typed options named as overrides."""
    name = preset or DEFAULT_PRESET
    def shown(value):  # the augmentation list as the command line spells it
        return ",".join(value) or "none" if isinstance(value, list) else value

    set_here = ", ".join(f"{option} {shown(values[option])}" for option in from_preset)
    typed = [option for option in PRESET_OPTIONS if option not in from_preset]
    return (f"preset {name}: {set_here or 'nothing (every option typed)'}"
            + (f"; from the command line: {', '.join(typed)}" if typed else ""))
