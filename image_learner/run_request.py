"""What a training run was asked to do (``RunRequest``, built from the command line by ``from_args``) and the
checks of those options: before any image is unpacked (``resolve_training_options``,
``check_task_options_early``) and once the task is known (``resolve_task_options``). A mistake costs seconds,
not a preparation; pipeline.py runs the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from image_learner.data import dataset_prep, image_health, tabular, task_choice
from image_learner.data.input_utils import InputError, ZipLimits
from image_learner.evaluation import class_decision, metrics, ood, subgroups, trust
from image_learner.model import model_card
from image_learner.run_files import log
from image_learner.training import data_parallel, devices, ludwig_config, presets, search, search_run, timm_backbone


@dataclass
class RunRequest:
    csv_file: str
    image_zip: str
    output_dir: str
    data: dataset_prep.DataOptions
    training: ludwig_config.TrainingOptions
    zip_limits: ZipLimits = ZipLimits()
    overwrite: bool = False
    make_report: bool = True
    distributed: str = "none"  # data_parallel.DISTRIBUTED: "ddp" trains in num_workers processes
    num_workers: int = 1
    data_licence: str = model_card.NOT_STATED  # as the user states it, for MODEL_CARD.md
    export_onnx: bool = False  # model.onnx in the model ZIP (onnx_export)
    audit: bool = True  # label_issues.csv and embeddings.csv (image_learner/evaluation/audit.py)
    verbose: bool = False  # Ludwig's and the libraries' output on the console too, not only in training_log.txt
    ood_keep_rate: float = ood.DEFAULT_KEEP_RATE  # --ood-keep-rate (0: no out-of-distribution flag)
    coverage: float = trust.DEFAULT_COVERAGE  # conformal prediction sets / intervals (0: off)
    ensemble: str = "refit"  # --ensemble: what a cross-validation delivers (model/fold_ensemble.py)
    preset: tuple = ("fast", ())  # --preset and the options it set (training/presets.py): ("best", ("epochs", ...))
    search: object = None  # --search: a training/search.SearchSpec (None: off)


def from_args(args) -> RunRequest:
    """The request of an ``image-learner`` (train) command line: argparse's namespace (image_learner_cli.py) ->
    RunRequest, the preset's options filled in where the user typed none (training/presets.py)."""
    chosen, from_preset = presets.resolve(args.preset, {o: getattr(args, o) for o in presets.PRESET_OPTIONS})
    data_chosen = {o: chosen.pop(o) for o in presets.DATA_OPTIONS}
    data = dataset_prep.DataOptions(
        image_column=args.image_column, target_column=args.target_column,
        sample_id_column=args.sample_id_column or None, split_column=args.split_column or None,
        random_split=args.random_split,
        split_probabilities=tuple(args.split_probabilities), random_seed=args.random_seed,
        leakage_guard=args.leakage_guard, leakage_max_distance=args.leakage_max_distance,
        positive_label=args.positive_label or None, max_bad_image_fraction=args.max_bad_image_fraction,
        max_missing_fraction=args.max_missing_fraction, workers=max(1, args.preprocessing_workers),
        task=args.task, folds_optional="cross_validation" in from_preset, **data_chosen,
        drop_unhealthy=image_health.parse_drop_option(args.drop_unhealthy),
        subgroup_columns=subgroups.parse_spec(args.subgroup_columns),
        tabular_columns=tabular.parse_spec(args.tabular_columns))
    training = ludwig_config.TrainingOptions(
        model_name=args.model_name, image_size=args.image_size, use_pretrained=args.use_pretrained,
        fine_tune=args.fine_tune, pretrained_weights=args.pretrained_weights or None, batch_size=args.batch_size,
        random_seed=args.random_seed, preprocessing_workers=max(1, args.preprocessing_workers), device=args.device,
        mixed_precision=args.mixed_precision, validation_metric=args.validation_metric,
        threshold_metric=args.threshold_metric or "youden", threshold=args.threshold, **chosen)
    limits = ZipLimits(args.max_unzipped_bytes, args.max_zip_members, args.max_zip_ratio)
    return RunRequest(args.csv_file, args.image_zip, args.output_dir, data, training, limits,
                      overwrite=args.overwrite, make_report=not args.no_report,
                      distributed=args.distributed, num_workers=args.num_workers,
                      data_licence=args.data_licence, export_onnx=args.export_onnx, verbose=args.verbose,
                      ood_keep_rate=args.ood_keep_rate, coverage=args.coverage, audit=args.audit,
                      ensemble=args.ensemble, preset=(args.preset, from_preset),
                      search=search.spec_from_args(args))


def resolve_training_options(request: RunRequest) -> None:
    """Resolve the model alias, default image size and device in place; raise InputError on bad options."""
    opts = request.training
    choice = devices.select(opts.device, opts.mixed_precision)  # first: "cpu" hides the GPUs before CUDA starts
    opts.device, opts.mixed_precision = choice.device, "on" if choice.mixed_precision else "off"
    if opts.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {opts.epochs}")
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if not (opts.learning_rate > 0):
        raise InputError(f"--learning-rate must be above 0, got {opts.learning_rate}")
    try:
        opts.model_name = timm_backbone.resolve_model_name(opts.model_name)
    except timm_backbone.BackboneError as err:
        raise InputError(str(err)) from err
    if not opts.image_size:
        opts.image_size = timm_backbone.default_image_size(opts.model_name)
    if opts.image_size < 16 or opts.image_size > 1024:
        raise InputError(f"--image-size must be between 16 and 1024 pixels, got {opts.image_size}")
    if opts.pretrained_weights and not os.path.isfile(opts.pretrained_weights):
        raise InputError(f"--pretrained-weights file {opts.pretrained_weights!r} does not exist")
    opts.augmentation = ludwig_config.parse_augmentation(opts.augmentation)
    if opts.validation_metric not in ("auto", *ludwig_config.ALL_VALIDATION_METRICS):
        raise InputError(f"--validation-metric {opts.validation_metric!r} is unknown; choose from auto, "
                         + ", ".join(ludwig_config.ALL_VALIDATION_METRICS))
    data_parallel.check_options(request.distributed, request.num_workers, opts.lr_schedule, opts.device)
    try:
        request.coverage = trust.check_coverage(request.coverage)
    except ValueError as err:
        raise InputError(str(err)) from err
    if opts.threshold_metric not in metrics.THRESHOLD_POLICIES:
        raise InputError(f"--threshold-metric {opts.threshold_metric!r} is unknown; choose from "
                         + ", ".join(metrics.THRESHOLD_POLICIES))
    if opts.class_decision not in class_decision.RULES:
        raise InputError(f"--class-decision {opts.class_decision!r} is unknown; choose from "
                         + ", ".join(class_decision.RULES))
    if opts.threshold is not None and not 0 < opts.threshold < 1:
        raise InputError(f"--threshold must be between 0 and 1 (exclusive), got {opts.threshold}")
    request.data_licence = model_card.check_licence(request.data_licence)
    if request.export_onnx and request.data.tabular_columns:
        raise InputError("--export-onnx takes the image alone as the model's input; a model with --tabular-columns "
                         "cannot be exported to ONNX yet: drop one of the two")
    if request.search:
        search_run.check(request)
    if request.export_onnx:
        from image_learner.model import onnx_export

        onnx_export.check_available()


def check_task_options(opts: ludwig_config.TrainingOptions, task: str) -> None:
    """A validation metric the task does not have, a fixed --threshold on a task without one, or class
    weights for a regression: an InputError (changes nothing)."""
    ludwig_config.resolve_validation_metric(opts.validation_metric, task)
    if task == "regression" and opts.class_weights != "none":
        raise InputError(f"--class-weights {opts.class_weights} is for classification; this is a regression task "
                         "(a number to predict has no classes to weigh)")
    if task != "binary" and opts.threshold is not None:
        raise InputError(f"--threshold applies to binary tasks only; this is a {task} task")
    if task != "multiclass" and opts.class_decision != class_decision.DEFAULT_RULE:
        raise InputError(f"--class-decision {opts.class_decision} applies to tasks of 3 or more classes; this is a "
                         f"{task} task" + (" (its decision threshold is tuned: --threshold-metric)"
                                           if task == "binary" else ""))


def check_task_options_early(request: RunRequest) -> None:
    """check_task_options for the task the CSV's label column makes, before any image is unpacked or hashed,
    so a mistake costs seconds, not the whole preparation. The matched rows decide the task in the end
    (resolve_task_options checks again); they make another task only when whole classes have no image."""
    early = task_choice.task_from_csv(request.csv_file, request.data.target_column, request.data.task)
    if early is None:  # the CSV's own problem: dataset_prep names it, in its place
        return
    note = presets.fit_to_task(request.training, request.preset[1], early[0])  # fewer classes never make a regression
    if note:
        log(f"note: {note}")
    try:
        check_task_options(request.training, early[0])
    except InputError as err:
        raise InputError(f"{err} ({early[1]})") from err


def resolve_task_options(opts: ludwig_config.TrainingOptions, task: str) -> None:
    """Once the task is known: "auto" -> the task's validation metric; a fixed --threshold on a task without
    one, or class weights for a regression, is an InputError (a --threshold-metric is only noted: the Galaxy
    form always sends one)."""
    check_task_options(opts, task)
    opts.validation_metric = ludwig_config.resolve_validation_metric(opts.validation_metric, task)
    if task != "binary":
        if opts.threshold_metric != "youden":
            log(f"note: --threshold-metric {opts.threshold_metric} ignored: a {task} task has no decision threshold")
        opts.threshold_metric = "youden"
