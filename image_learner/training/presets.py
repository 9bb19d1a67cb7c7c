"""Quality presets (``--preset``): named bundles of training settings, in the spirit of AutoGluon's presets.

``fast`` is the tool's long-standing defaults. ``best`` bundles the levers that the measurements kept
(BENCHMARKS.md, "Presets"; each chosen before its test, on validation rows or earlier runs, never on the test
rows it is reported on):

- a fine-tuning learning-rate policy: 3e-4 with one epoch of linear warm-up and cosine decay to 0 over 12
  epochs, all of which run (the kept epoch is still the best one by the validation metric); 0.001 with
  balanced weights peaked after one epoch in the issue's full-set run;
- balanced class weights (classification only: a regression keeps none), as skewed sets such as HAM10000
  (two thirds one class) otherwise learn to say the majority class;
- flips both ways and small rotations as augmentation (a dermoscopy or microscopy image has no "up");
- dihedral test-time augmentation: on the validation images of a model trained this way it raised ROC-AUC
  (+0.020, interval above 0) and accuracy without lowering balanced accuracy (on a model trained with
  horizontal flips only it had hurt: the views must be ones the model was trained on). 8x the predict time.

On all 7,347 shared HAM10000 images (lesion-grouped, 128 px, lite0) ``best`` raised the test balanced
accuracy from 0.560 to 0.628 and the accuracy from 0.777 to 0.818 against ``fast``. Left out because they did
not help in their paired measurements: metadata fusion, the fold ensemble (also K more trainings), the search.
The image size stays the backbone's pretraining size (the measured best, "Image size").

An option given on the command line always wins over the preset's value; ``resolve`` says which options
came from the preset, and the run records both (run_summary.json ``training.preset``).
"""

from __future__ import annotations

from image_learner.errors import InputError

DEFAULT_PRESET = "fast"

# The options a preset sets, by their TrainingOptions names; the CLI leaves them unset (None) unless typed.
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"epochs": 30, "early_stop": 5, "learning_rate": 0.001, "lr_schedule": "constant",
             "augmentation": "random_horizontal_flip", "class_weights": "none", "tta": "none"},
    "best": {"epochs": 12, "early_stop": 0, "learning_rate": 0.0003, "lr_schedule": "cosine",
             "augmentation": "random_horizontal_flip,random_vertical_flip,random_rotate",
             "class_weights": "balanced", "tta": "dihedral"},
}
PRESET_OPTIONS = tuple(PRESETS[DEFAULT_PRESET])


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
    """A preset's class weights do not apply to a regression: drop them (in place) and say so; a typed
    ``--class-weights`` is left for check_task_options to refuse. Returns the note to log, or None."""
    if task == "regression" and "class_weights" in from_preset and opts.class_weights != "none":
        opts.class_weights = "none"
        return "the preset's class weights apply to classification only: none for this regression"
    return None


def describe(preset: str | None, from_preset: tuple[str, ...], values: dict[str, object]) -> str:
    """One log line: the preset and what it set, the typed options named as overrides."""
    name = preset or DEFAULT_PRESET
    def shown(value):  # the augmentation list as the command line spells it
        return ",".join(value) or "none" if isinstance(value, list) else value

    set_here = ", ".join(f"{option} {shown(values[option])}" for option in from_preset)
    typed = [option for option in PRESET_OPTIONS if option not in from_preset]
    return (f"preset {name}: {set_here or 'nothing (every option typed)'}"
            + (f"; from the command line: {', '.join(typed)}" if typed else ""))
