#!/usr/bin/env python3
"""Image Learner command line: train an image classifier from a ZIP of images and a metadata CSV.

    image-learner [train] --csv-file meta.csv --image-zip images.zip --output-dir out [options]
    image-learner predict --model trained_model.zip --image-zip new.zip --output-dir out [--csv-file meta.csv]

Exit codes: 0 success; 2 bad input or options (the message names the file, row or column);
3 pretrained weights unavailable; 137 out of memory (Galaxy may retry with more); 143 / 130 stopped by
SIGTERM / SIGINT (outputs and scratch files removed); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager

# Galaxy runs this file directly from the tool directory: make its sibling modules importable.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EXIT_INPUT, EXIT_WEIGHTS, EXIT_OOM = 2, 3, 137
EXIT_WORKERS = 4  # a --distributed training worker died; the others were stopped


def add_device_options(parser: argparse.ArgumentParser, mixed_precision: bool = True) -> None:
    from image_learner.training import devices

    group = parser.add_argument_group("hardware")
    group.add_argument("--device", choices=devices.DEVICES, default="auto",
                       help="auto: a CUDA GPU when one is visible, else the CPU; cuda without a GPU is an error")
    if mixed_precision:
        group.add_argument("--mixed-precision", choices=devices.MIXED_PRECISION, default="auto",
                           help="auto: on with a GPU (bfloat16 where it has it, else float16 with loss scaling), "
                                "off on the CPU")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # a preset's option says its default itself
        return action.help if "set by --preset" in (action.help or "") else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from image_learner import job_cpus
    from image_learner.data import image_check
    from image_learner.data import image_health
    from image_learner.data import input_utils
    from image_learner.data import leakage_guard
    from image_learner.data import task_choice
    from image_learner.training.ludwig_config import ALL_VALIDATION_METRICS, AUGMENTATIONS, LR_SCHEDULES
    from image_learner.evaluation.class_decision import RULES as CLASS_DECISIONS
    from image_learner.evaluation.metrics import THRESHOLD_POLICIES
    from image_learner.evaluation.tta import MODES as TTA_MODES
    from image_learner.training import search
    from image_learner.training.presets import DEFAULT_PRESET, PRESETS

    def _from_preset(option: str, text: str = "") -> str:  # "(default: None)" would hide the preset's value
        values = ", ".join(f"{name} {preset[option]}" for name, preset in PRESETS.items())
        return f"{text}{' ' if text else ''}(default: set by --preset: {values})"

    parser = argparse.ArgumentParser(
        prog="image-learner", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--csv-file", required=True, help="metadata CSV/TSV: one row per image")
    io.add_argument("--image-zip", required=True, help="ZIP archive of the images")
    io.add_argument("--output-dir", required=True, help="where the model, report and tables are written")
    io.add_argument("--image-column", default="image_path", help="image path column (name or 1-based index)")
    io.add_argument("--target-column", default="label",
                    help="label column: classes, or a number to predict (name or 1-based index)")
    io.add_argument("--task", choices=task_choice.TASKS, default="auto",
                    help="auto: two labels make a binary task; a column of numbers with more than "
                         f"{task_choice.REGRESSION_MIN_DISTINCT - 1} distinct values a regression (numbers with "
                         "missing-value markers such as NA are an error); anything else multiclass, so class codes "
                         "0/1/2 stay classes. The log says what was chosen and why")
    io.add_argument("--sample-id-column", default=None,
                    help="patient/lesion id column: all images of one id stay in one split")
    io.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    io.add_argument("--data-licence", default="not stated", metavar="TEXT",
                    help="the images' licence as you know it (e.g. 'CC BY-NC 4.0'), written into the model card")
    io.add_argument("--export-onnx", action="store_true",
                    help="add model.onnx to trained_model.zip (needs pip install 'image-learner[onnx]')")
    io.add_argument("--verbose", action="store_true",
                    help="also show Ludwig's tables, progress bars and the libraries' warnings on the console "
                         "(always in training_log.txt in --output-dir)")
    io.add_argument("--audit", action=argparse.BooleanOptionalAction, default=True,
                    help="label_issues.csv (suspected label errors, classification) and embeddings.csv (each "
                         "image's features), with their report sections; costs one more pass over the images "
                         "(--no-audit: skip)")
    io.add_argument("--no-report", action="store_true",
                    help="skip report.html (sweeps and benchmarks; every table is still written)")
    io.add_argument("--max-missing-fraction", type=float, default=0.1,
                    help="stop when more than this share of CSV rows have no image in the ZIP")
    io.add_argument("--max-bad-image-fraction", type=float, default=image_check.DEFAULT_MAX_BAD_FRACTION,
                    help="skip unreadable images, but stop when more than this share are unreadable")
    io.add_argument("--drop-unhealthy", default="none", metavar="ISSUES",
                    help="remove images flagged with these data-health issues before the split (comma-separated, "
                         "'all' or 'none'; logged, counted in run_summary.json, listed in data_health.csv): "
                         + ", ".join(image_health.ISSUES) + ". Duplicates: every copy but the first of its group. "
                         "Without this option nothing is removed; data_health.csv and the report only flag")

    split = parser.add_argument_group("split")
    how = split.add_mutually_exclusive_group()
    how.add_argument("--split-column", default=None,
                     help="column with 0/1/2 or train/validation/test: your own split (empty splits or classes "
                          "missing from a split are then warnings, not errors). Default: a column named 'split' "
                          "if the CSV has one (the log says so), else a random split")
    how.add_argument("--random-split", action="store_true",
                     help="split at random (seeded, stratified, grouped) even when the CSV has a 'split' column")
    split.add_argument("--split-probabilities", nargs=3, type=float, default=[0.7, 0.1, 0.2],
                       metavar=("TRAIN", "VALIDATION", "TEST"),
                       help="random split proportions; 0 for validation or test means no such split (otherwise an "
                            "empty split or a class missing from train or test stops the run). With a split column "
                            "lacking validation rows: the share of train carved out as validation")
    split.add_argument("--cross-validation", type=int, default=None, metavar="K",
                       help=_from_preset("cross_validation",
                                         "K-fold cross-validation (K >= 2; 0: off): folds stratified by label and "
                                         "grouped like the split; each fold's model trains on the other folds "
                                         "(validation carved from them by the validation share of "
                                         "--split-probabilities) and predicts its fold; the delivered model is "
                                         "retrained on all non-test images for the median kept epoch. A split "
                                         "column's test rows stay a held-out test set"))
    split.add_argument("--hold-out-test", action=argparse.BooleanOptionalAction, default=None,
                       help=_from_preset("hold_out_test",
                                         "with --cross-validation and no split column: hold out the test share of "
                                         "--split-probabilities (the rows one split with this seed would test "
                                         "on) as a test set the delivered model is scored on once; the folds "
                                         "are made of the rest"))
    split.add_argument("--ensemble", choices=("refit", "folds", "folds+refit"), default="refit",
                       help="with --cross-validation: what predict uses. refit: the model retrained on all "
                            "non-test images; folds: the mean of the K fold models' outputs; folds+refit: the mean "
                            "of the K fold models and the refit. The model ZIP then holds every fold model; the "
                            "report compares the ensemble with the refit on the held-out test rows")
    split.add_argument("--leakage-guard", action=argparse.BooleanOptionalAction, default=True,
                       help="keep images that are the same picture up to flips/rotations in one split")
    split.add_argument("--leakage-max-distance", type=int, default=leakage_guard.DEFAULT_MAX_DISTANCE,
                       help="largest hash distance (of 256 bits, 0-40) counted as the same picture")
    split.add_argument("--positive-label", default=None,
                       help="binary tasks: the positive class (default: the second in sorted order)")

    model = parser.add_argument_group("model")
    model.add_argument("--model-name", default="caformer_s18_384",
                       help="timm backbone, e.g. caformer_s18_384, tf_efficientnet_lite0, resnet50")
    model.add_argument("--use-pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="start from pretrained (ImageNet) weights")
    model.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True,
                       help="train the backbone too (otherwise only the classifier head)")
    model.add_argument("--pretrained-weights", default=None,
                       help="local timm state dict (.safetensors/.pth) instead of a download")
    model.add_argument("--image-size", type=int, default=None,
                       help="square side images are resized to (default: the backbone's pretraining size)")
    model.add_argument("--tabular-columns", default="",
                       help="comma-separated CSV columns (names or 1-based indices), e.g. age,sex,localization: "
                            "model inputs beside the image (Ludwig's concat combiner). Numbers (every non-missing "
                            "value numeric) are z-scored with the training rows' mean/std, a missing one gets the "
                            "training mean; categories (at most 200 values) are one-hot over the training rows' "
                            "values, missing or unseen ones in one unknown slot. predict needs the same columns")

    train = parser.add_argument_group("training")
    train.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                       help="settings for the options below that name it; an option you type wins. fast: the "
                            "long-standing defaults; best: the levers measured to help (BENCHMARKS.md, Presets)")
    train.add_argument("--epochs", type=int, default=None, help=_from_preset("epochs"))
    train.add_argument("--early-stop", type=int, default=None,
                       help=_from_preset("early_stop", "stop after this many epochs without improvement of the "
                                          "--validation-metric (0: never)"))
    train.add_argument("--validation-metric", choices=("auto", *ALL_VALIDATION_METRICS), default="auto",
                       help="validation metric that picks the kept epoch and drives early stopping; auto: "
                            "balanced_accuracy (multiclass), roc_auc (binary), mae (regression). Classification: "
                            "balanced_accuracy, accuracy, macro_f1, roc_auc, loss (binary accuracy, balanced "
                            "accuracy and macro F1 at P >= 0.5, as the threshold is tuned after training); "
                            "regression: mae, rmse, r2, loss")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=None, help=_from_preset("learning_rate"))
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                       help=_from_preset("lr_schedule", "constant, or cosine: one epoch of warm-up, then cosine decay "
                                          "to 0 by the last epoch"))
    train.add_argument("--random-seed", type=int, default=42, help="seeds the split and the training")
    train.add_argument("--augmentation", default=None,
                       help=_from_preset("augmentation", "comma-separated, or 'none': " + ", ".join(AUGMENTATIONS)))
    train.add_argument("--class-weights", choices=("none", "balanced"), default=None,
                       help=_from_preset("class_weights", "'balanced' weighs the loss by inverse class frequency "
                                          "(classification only)"))
    train.add_argument("--tta", choices=TTA_MODES, default=None,
                       help=_from_preset("tta", "test-time augmentation: average the model's outputs over the "
                            "image and its left-right mirror (flips) or over 4 quarter turns, each mirrored (dihedral), in "
                            "evaluation and, recorded in the model, in predict; none: each image once"))
    train.add_argument("--class-decision", choices=CLASS_DECISIONS, default=None,
                       help=_from_preset("class_decision",
                                         "multiclass tasks: argmax predicts the most probable class; balanced moves "
                                         "the decision towards the rare classes (logit adjustment by the training "
                                         "class frequencies, its strength tuned on the validation split, or the "
                                         "out-of-fold rows with --cross-validation, for balanced accuracy; recorded "
                                         "in the model for predict): higher balanced accuracy, lower accuracy. "
                                         "Probabilities, ROC-AUC and prediction sets are unchanged"))
    cut = train.add_mutually_exclusive_group()
    cut.add_argument("--threshold-metric", choices=THRESHOLD_POLICIES, default=None,
                     help="binary tasks: the decision threshold maximises this on the validation split "
                          "(default youden = sensitivity + specificity - 1, which balanced_accuracy ranks the same; "
                          "f1: F1 of the positive class; mcc: Matthews correlation)")
    cut.add_argument("--threshold", type=float, default=None,
                     help="binary tasks: a fixed decision threshold on P(positive), between 0 and 1, instead of "
                          "tuning one (an error for other tasks)")
    train.add_argument("--preprocessing-workers", type=int, default=job_cpus.default_workers(),
                       help="processes that decode, check and resize the images before training; by default the "
                            "CPUs this job may use (its affinity, capped by GALAXY_SLOTS), at most "
                            f"{job_cpus.MAX_DEFAULT_WORKERS}")
    train.add_argument("--coverage", type=float, default=0.9,
                       help="conformal prediction sets (classes) or intervals (regression) holding the true answer "
                            "this often, set on the validation rows (out-of-fold with --cross-validation); 0: off")

    trust = parser.add_argument_group("subgroups and out-of-distribution flag")
    trust.add_argument("--subgroup-columns", default="",
                       help="comma-separated CSV columns (names or 1-based indices), e.g. sex,localization,age: "
                            "test metrics per slice of each, with bootstrap intervals (metrics.json 'subgroups', "
                            "the report); numbers with more than 10 distinct values are cut at their quartiles. "
                            "Used for evaluation only, never as model input")
    trust.add_argument("--ood-keep-rate", type=float, default=0.95,
                       help="classification: the share of validation images (out-of-fold with cross-validation) "
                            "whose top-class probability stays above the out-of-distribution threshold stored in "
                            "the model; predict flags images below it ('ood'). 0: off")

    limits = parser.add_argument_group("archive safety limits")
    limits.add_argument("--max-unzipped-bytes", type=int, default=input_utils.DEFAULT_MAX_TOTAL_BYTES)
    limits.add_argument("--max-zip-members", type=int, default=input_utils.DEFAULT_MAX_MEMBERS)
    limits.add_argument("--max-zip-ratio", type=float, default=input_utils.DEFAULT_MAX_RATIO,
                        help="largest uncompressed:compressed ratio of one member")
    add_device_options(parser)
    parallel = parser.add_argument_group("data-parallel training (needs pip install 'image-learner[distributed]')")
    parallel.add_argument("--distributed", choices=("none", "ddp"), default="none",
                          help="ddp: train in --num-workers processes (one per GPU, or gloo on the CPU) with "
                               "Ludwig's Accelerate strategy; each takes --batch-size images a step, and Ludwig "
                               "scales the learning rate by the number of workers")
    parallel.add_argument("--num-workers", type=int, default=1, help="processes for --distributed ddp")
    search.add_arguments(parser)
    return parser


def build_predict_parser() -> argparse.ArgumentParser:
    from image_learner import job_cpus
    from image_learner.data import input_utils
    from image_learner.evaluation.tta import MODES as TTA_MODES

    parser = argparse.ArgumentParser(
        prog="image-learner predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Classify new images with a trained_model.zip (offline). With a CSV holding true labels, "
                    "also evaluate.")
    parser.add_argument("--model", required=True, help="trained_model.zip written by training")
    parser.add_argument("--image-zip", required=True, help="ZIP archive of the images to classify")
    parser.add_argument("--output-dir", required=True, help="where predictions.csv (and metrics) are written")
    parser.add_argument("--csv-file", default=None, help="optional CSV: which images, and true labels if present")
    parser.add_argument("--image-column", default="image_path", help="image path column (name or 1-based index)")
    parser.add_argument("--target-column", default=None,
                        help="true label column (default: a column named 'label' if present)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="only predict, even when the CSV has a label column")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preprocessing-workers", type=int, default=job_cpus.default_workers(),
                        help="threads that decode and resize the images (by training's rules) while the network "
                             "runs; by default the CPUs this job may use (its affinity, capped by GALAXY_SLOTS), at "
                             f"most {job_cpus.MAX_DEFAULT_WORKERS}")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ludwig's and the libraries' output on the console (always in "
                             "prediction_log.txt in --output-dir)")
    parser.add_argument("--max-unzipped-bytes", type=int, default=input_utils.DEFAULT_MAX_TOTAL_BYTES,
                        help="limits of the image ZIP; the model ZIP has its own (model_archive.MODEL_LIMITS)")
    parser.add_argument("--max-zip-members", type=int, default=input_utils.DEFAULT_MAX_MEMBERS)
    parser.add_argument("--max-zip-ratio", type=float, default=input_utils.DEFAULT_MAX_RATIO)
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="test-time augmentation views (none, flips, dihedral); default: the model's own, "
                             "as training evaluated it (the temperature and prediction sets were fitted on it)")
    parser.add_argument("--abstain-above-set-size", type=int, default=None, metavar="K",
                        help="mark a row 'abstain' when its conformal prediction set holds more than K classes "
                             "(needs a model trained with --coverage above 0)")
    add_device_options(parser, mixed_precision=False)
    return parser


def predict_request_from_args(args: argparse.Namespace):
    from image_learner.data import input_utils
    from image_learner.model import predictor

    limits = input_utils.ZipLimits(args.max_unzipped_bytes, args.max_zip_members, args.max_zip_ratio)
    return predictor.PredictRequest(args.model, args.image_zip, args.output_dir, args.csv_file or None,
                                    args.image_column, args.target_column or None, args.batch_size, limits,
                                    args.overwrite, evaluate=not args.no_evaluate, verbose=args.verbose,
                                    abstain_above_set_size=args.abstain_above_set_size,
                                    workers=max(1, args.preprocessing_workers), tta=args.tta)


class Stopped(BaseException):
    """SIGTERM (Galaxy's cancel or walltime) or SIGINT as an exception, so that the cleanup every run
    does after a failure (outputs, scratch folder, worker processes) also runs then. A BaseException:
    ``except Exception`` in a library does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_as_exceptions():
    """While the block runs, SIGTERM and SIGINT raise :class:`Stopped` in the main thread; the first one
    only: later ones are ignored so they cannot cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum, frame):
        for other in previous:
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    for signum in previous:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Thread-count variables the numeric libraries read at import; an empty one (``OMP_NUM_THREADS=``) makes
# scipy's FFT raise in the image check's workers, so it means "unset", as OpenMP itself reads it.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def main(argv: list[str] | None = None) -> int:
    from image_learner import host_allocator

    for name in THREAD_VARIABLES:
        if os.environ.get(name, "unset").strip() == "":
            del os.environ[name]
    host_allocator.tune()  # before torch allocates: fewer page faults every training step (its docstring)
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = argv[0] if argv[:1] in (["train"], ["predict"]) else "train"
    argv = argv[1:] if argv[:1] == [mode] else argv
    args = (build_predict_parser() if mode == "predict" else build_parser()).parse_args(argv)
    with signals_as_exceptions():
        try:
            return _run(mode, args)
        except Stopped as stop:
            print(f"image-learner: stopped by {stop}; partial outputs and scratch files were removed",
                  file=sys.stderr)
            return 128 + stop.signum


def _run(mode: str, args: argparse.Namespace) -> int:
    from image_learner.training import data_parallel
    from image_learner.training import devices
    from image_learner import run_files
    from image_learner.training import timm_backbone
    from image_learner.errors import InputError

    try:
        # First: --device cpu must hide the GPUs before anything starts CUDA (see devices.py).
        devices.select(args.device, getattr(args, "mixed_precision", "auto"))
        if mode == "predict":
            from image_learner.model import predictor

            predictor.predict(predict_request_from_args(args))
        else:
            from image_learner import pipeline, run_request

            pipeline.run(run_request.from_args(args))
    except InputError as err:
        print(f"image-learner: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except timm_backbone.BackboneError as err:
        print(f"image-learner: error: {err}", file=sys.stderr)
        return EXIT_WEIGHTS
    except MemoryError as err:  # devices.OutOfMemory names the sizes to lower
        print(f"image-learner: error: {err or 'out of memory; lower --batch-size or --image-size'}", file=sys.stderr)
        return EXIT_OOM
    except data_parallel.WorkersFailed as err:
        print(f"image-learner: error: {err}; outputs removed", file=sys.stderr)
        return EXIT_WORKERS
    except RuntimeError as err:
        if devices.is_out_of_memory(err):  # one raised outside training and prediction (e.g. Grad-CAM)
            print(f"image-learner: error: out of memory ({err}); lower --batch-size or --image-size",
                  file=sys.stderr)
            return EXIT_OOM
        raise
    if mode == "predict":  # training ends with its own summary (pipeline.final_summary)
        run_files.log(f"done: outputs in {os.path.abspath(args.output_dir)}")
    return 0


def command() -> None:
    """The program (``image-learner``, ``python image_learner_cli.py``); tests call :func:`main`."""
    code = main()
    if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        # Stopped, outputs and scratch folder removed: leave now instead of waiting for, or crashing at
        # exit on, threads the libraries still run (Ludwig's image decoding, torch's pools; seen: SIGABRT).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    command()
