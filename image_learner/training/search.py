"""--search lr,image_size,model: the pure part of a small hyperparameter search (the driver that trains the
trials is search_run.py).

What is searched: the learning rate, log-uniform over LR_RANGE; the image size, one of --search-image-sizes
(default: the run's image size, and half and three quarters of it in multiples of 8); the backbone, one of
--search-models.
A parameter not searched keeps the run's value (with 'model' searched and not 'image_size', every backbone
trains at the run's --image-size, or the --model-name's pretraining size).

How a trial is scored: K grouped, stratified folds of the NON-TEST rows (the same folds for every trial,
seeded by --random-seed; test rows are in none of them); per fold a model trains on the other folds (a
validation part carved from them picks its kept epoch) and is scored on its fold; the trial's score is the
mean of the K fold scores of --validation-metric, maximised or minimised as the metric wants. The winner's
settings then train the delivered model in the ordinary run, which alone touches the test rows.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from image_learner.errors import InputError

PARAMS = ("lr", "image_size", "model")
# log-uniform: fine-tuning rates of pretrained backbones sit around 1e-4; 3e-3 is about where Adam diverges
LR_RANGE = (1e-5, 3e-3)
DEFAULT_SIZE_SHARES = (0.5, 0.75, 1.0)  # of the run's image size: smaller inputs train 2-4x faster
DEFAULT_TRIALS, DEFAULT_FOLDS, DEFAULT_STUDY = 8, 3, "image-learner-search"
MAX_TRIALS, MAX_FOLDS = 1000, 20
# The TrainingOptions field each searched parameter sets
OPTION = {"lr": "learning_rate", "image_size": "image_size", "model": "model_name"}
TRIALS_CSV = "search_trials.csv"


@dataclass(frozen=True)
class SearchSpec:
    params: tuple[str, ...]
    trials: int = DEFAULT_TRIALS
    folds: int = DEFAULT_FOLDS
    models: tuple[str, ...] = ()
    image_sizes: tuple[int, ...] = ()  # empty: default_sizes of the run's image size
    storage: str | None = None  # an Optuna RDB storage URL: trials shared by every run that names it
    study: str = DEFAULT_STUDY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train subcommand's "search" option group."""
    group = parser.add_argument_group("search (needs pip install 'image-learner[search]')")
    group.add_argument("--search", default=argparse.SUPPRESS, metavar="PARAMS",
                       help="comma-separated subset of " + ",".join(PARAMS) + ": choose them by a search (Optuna "
                            "TPE, seeded by --random-seed) before the run; each trial is scored by grouped "
                            "cross-validation of the non-test rows; the winner trains the "
                            "delivered model (default: off)")
    group.add_argument("--search-trials", type=int, default=argparse.SUPPRESS, metavar="N",
                       help=f"trials this run makes (default {DEFAULT_TRIALS}), one after another")
    group.add_argument("--search-folds", type=int, default=argparse.SUPPRESS, metavar="K",
                       help=f"grouped folds that score each trial (default {DEFAULT_FOLDS}; at least 2)")
    group.add_argument("--search-models", default=argparse.SUPPRESS, metavar="A,B",
                       help="timm backbones to choose from when 'model' is searched (at least 2)")
    group.add_argument("--search-image-sizes", default=argparse.SUPPRESS, metavar="S1,S2",
                       help="image sizes to choose from when 'image_size' is searched (default: --image-size, or "
                            "the backbone's, and half and three quarters of it in multiples of 8)")
    group.add_argument("--search-storage", default=argparse.SUPPRESS, metavar="URL",
                       help="Optuna storage, e.g. sqlite:///search.db or postgresql://host/db: the trials are "
                            "kept there, and runs on several machines naming the same storage and study share them")
    group.add_argument("--search-study", default=argparse.SUPPRESS, metavar="NAME",
                       help=f"the study's name in --search-storage (default {DEFAULT_STUDY})")


def spec_from_args(args: argparse.Namespace) -> SearchSpec | None:
    """The parsed search options, or None without --search; InputError for a bad or stray one. (Their
    argparse default is SUPPRESS: an option not given is absent, and the help shows the real defaults.)"""
    given = vars(args)
    return parse_spec(*(given.get(name) for name in ("search", "search_trials", "search_folds", "search_models",
                                                      "search_image_sizes", "search_storage", "search_study")))


def _names(text: str | None) -> list[str]:
    return list(dict.fromkeys(p.strip() for p in (text or "").split(",") if p.strip()))


def parse_spec(params: str | None, trials: int | None = None, folds: int | None = None, models: str | None = None,
               image_sizes: str | None = None, storage: str | None = None,
               study: str | None = None) -> SearchSpec | None:
    """Check the search options together: unknown parameters, a budget under 1, fewer than 2 folds, a list
    for a parameter that is not searched, or any search option without --search are InputErrors."""
    chosen = _names(params)
    if not chosen:
        stray = [flag for flag, value in (("--search-trials", trials), ("--search-folds", folds),
                                          ("--search-models", models), ("--search-image-sizes", image_sizes),
                                          ("--search-storage", storage), ("--search-study", study))
                 if value not in (None, "")]
        if stray:
            raise InputError(f"{stray[0]} needs --search (e.g. --search lr,image_size)")
        return None
    unknown = [p for p in chosen if p not in PARAMS]
    if unknown:
        raise InputError(f"--search {unknown[0]!r} is not searchable; choose from {', '.join(PARAMS)}")
    trials = DEFAULT_TRIALS if trials is None else trials
    if not 1 <= trials <= MAX_TRIALS:
        raise InputError(f"--search-trials must be between 1 and {MAX_TRIALS}, got {trials}")
    folds = DEFAULT_FOLDS if folds is None else folds
    if not 2 <= folds <= MAX_FOLDS:
        raise InputError(f"--search-folds must be between 2 and {MAX_FOLDS}, got {folds}")
    model_names = _names(models)
    if model_names and "model" not in chosen:
        raise InputError("--search-models is for --search model; add 'model' to --search or drop it")
    if "model" in chosen and len(model_names) < 2:
        raise InputError("--search model needs at least 2 backbones in --search-models (e.g. "
                         "--search-models tf_efficientnet_lite0,resnet18)")
    sizes = _sizes(image_sizes)
    if sizes and "image_size" not in chosen:
        raise InputError("--search-image-sizes is for --search image_size; add 'image_size' to --search or drop it")
    if study is not None and not study.strip():
        raise InputError("--search-study must not be empty")
    if storage is not None and "://" not in storage:
        raise InputError(f"--search-storage {storage!r} is not a database URL (e.g. sqlite:///search.db)")
    return SearchSpec(tuple(p for p in PARAMS if p in chosen), trials, folds, tuple(model_names), sizes,
                      storage or None, (study or DEFAULT_STUDY).strip())


def _sizes(text: str | None) -> tuple[int, ...]:
    values = _names(text)
    try:
        sizes = sorted({int(v) for v in values})
    except ValueError:
        raise InputError(f"--search-image-sizes must be whole numbers of pixels, got {text!r}") from None
    bad = [s for s in sizes if not 16 <= s <= 1024]
    if bad:
        raise InputError(f"--search-image-sizes must be between 16 and 1024 pixels, got {bad[0]}")
    if values and len(sizes) < 2:
        raise InputError("--search image_size needs at least 2 sizes in --search-image-sizes")
    return tuple(sizes)


def default_sizes(side: int) -> tuple[int, ...]:
    """DEFAULT_SIZE_SHARES of ``side``: ``side`` itself and the smaller shares rounded to multiples of 8, at
    least 16: 224 -> (112, 168, 224)."""
    return tuple(sorted({side} | {max(16, int(round(side * share / 8)) * 8) for share in DEFAULT_SIZE_SHARES
                                  if share < 1}))


def random_start(trials: int) -> int:
    """Trials TPE draws at random before it models the scores: half the budget, 2 to 10 (Optuna's default of
    10 would leave a budget of 8 a random search)."""
    return min(10, max(2, trials // 2))


def space(spec: SearchSpec, image_size: int) -> dict:
    """The searched values: {"lr": (low, high) log-uniform, "image_size": [sizes], "model": [names]}."""
    found = {}
    if "lr" in spec.params:
        found["lr"] = LR_RANGE
    if "image_size" in spec.params:
        found["image_size"] = list(spec.image_sizes or default_sizes(image_size))
    if "model" in spec.params:
        found["model"] = list(spec.models)
    return found


def suggest(trial, searched: dict) -> dict:
    """One trial's parameters drawn from ``searched`` (``space``) through an Optuna trial."""
    params = {}
    for name, values in searched.items():
        params[name] = (trial.suggest_float(name, *values, log=True) if name == "lr"
                        else trial.suggest_categorical(name, values))
    return params


def overrides(params: dict) -> dict:
    """Trial parameters -> TrainingOptions fields ({"lr": 1e-4} -> {"learning_rate": 1e-4})."""
    return {OPTION[name]: value for name, value in params.items()}


def describe_params(params: dict) -> str:
    """``lr 0.00042, image_size 128``, in PARAMS order (a parameter absent or None: not searched)."""
    return ", ".join(f"{name} {params[name]:.3g}" if name == "lr" else f"{name} {params[name]}"
                     for name in PARAMS if params.get(name) is not None)


def trial_record(number: int, state: str, params: dict, fold_scores, seconds: float | None,
                 error: str | None = None) -> dict:
    """One row of the trials table; the score is the mean of the fold scores (None unless all are finite)."""
    scores = [float(s) for s in fold_scores or []]
    finite = bool(scores) and all(math.isfinite(s) for s in scores)
    return {"trial": int(number), "state": state, **{name: params.get(name) for name in PARAMS},
            "fold_scores": scores, "score": sum(scores) / len(scores) if finite and state == "complete" else None,
            "seconds": None if seconds is None else round(float(seconds), 1),
            "error": (error or "").splitlines()[0][:300] if error else None}


def choose_winner(records: list[dict], higher_is_better: bool) -> dict | None:
    """The complete trial with the best score (the earliest on ties); None when none completed."""
    scored = [r for r in records if r["state"] == "complete" and r["score"] is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (-r["score"] if higher_is_better else r["score"], r["trial"]))


def trials_table(records: list[dict], folds: int, searched) -> list[dict]:
    """search_trials.csv's rows: trial, state, each searched parameter, fold_1..fold_K, score, seconds, error."""
    rows = []
    for r in sorted(records, key=lambda r: r["trial"]):
        scores = list(r["fold_scores"]) + [None] * (folds - len(r["fold_scores"]))
        rows.append({"trial": r["trial"], "state": r["state"], **{name: r[name] for name in searched},
                     **{f"fold_{k}": scores[k - 1] for k in range(1, folds + 1)},
                     "score": r["score"], "seconds": r["seconds"], "error": r["error"] or ""})
    return rows


def scored_on(metric: str, folds: int, rows: int, groups: int) -> str:
    """What a trial's score was computed on, in words (run_summary, report, model card)."""
    return (f"mean out-of-fold {metric} over {folds} grouped folds of the {rows} non-test rows ({groups} groups), "
            "each fold's model at its kept epoch (chosen on a validation part carved from its training folds)")


def storage_kind(url: str | None) -> str:
    """The storage's kind for the record (``sqlite``, ``postgresql``…; ``memory``): never the URL itself,
    which can hold a password."""
    return url.split("://", 1)[0].split("+", 1)[0] if url else "memory"


def describe_choice(record: dict) -> str:
    """The model card's and report's sentence on where the settings came from."""
    winner, test = record["winner"], record["test_rows"]
    return (f"{describe_params(winner['params'])} chosen by a search (trial {winner['trial']} of "
            f"{record['trials_in_study']}, {record['sampler']}) on the {record['scored_on']}; "
            + (f"the {test} held-out test rows were in no trial and were used once, by the model trained with these "
               "settings" if test else "there are no held-out test rows, so every number of this run comes from "
               "rows that also chose the settings (optimistic)"))
