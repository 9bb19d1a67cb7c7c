"""The --search driver: an Optuna study (TPE sampler, trials one after another) whose every trial is a
grouped K-fold cross-validation of the non-test rows; the winner's settings are then set on the run's
options, and the ordinary run trains and evaluates the delivered model with them (search.py has the pure
part and the rules).

Images: the prepared copies are at the run's image size; a trial at another size reads copies made the
same way (image_check.check_images: the same decode, conversion and bilinear resize), of the non-test images
only; when the winner's size differs, every image is copied at it before the ordinary run, so the delivered
model sees exactly what a run started with that size would.

Several machines: each names the same --search-storage and --search-study and runs its own --search-trials
trials; Optuna's storage lets each trial's sampler see every finished trial, and each machine's run trains
with the best settings found by then. A study is tied to its data, folds, space and training options (a
fingerprint in the study): a run whose fingerprint differs is refused, so no trial is ever compared with one
scored on other rows.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import replace

import numpy as np
import pandas as pd

import split_utils
from image_learner.data.image_check import check_images
from image_learner.data.input_utils import write_output_csv
from image_learner.errors import InputError
from image_learner.run_files import log
from image_learner.training import cross_validation, ludwig_config, model_fit, search

FINGERPRINT = "image_learner_fingerprint"
TEST = 2  # the split code of held-out test rows: in no search fold


def check(request) -> None:
    """Before any image is unpacked: optuna installed, every --search-models backbone known to timm, no
    local weights file with a searched backbone (the file fits one architecture)."""
    spec, opts = request.search, request.training
    if "model" in spec.params and opts.pretrained_weights:
        raise InputError("--search model cannot use --pretrained-weights (a weights file fits one backbone); "
                         "drop one of the two")
    from image_learner.training import timm_backbone

    try:
        models = tuple(timm_backbone.resolve_model_name(name) for name in spec.models)
    except timm_backbone.BackboneError as err:
        raise InputError(f"--search-models: {err}") from err
    _optuna()
    request.search = replace(spec, models=models)


def _optuna():
    try:
        import optuna
    except ImportError as err:
        raise InputError("--search needs the optuna package: pip install 'image-learner[search]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log has one line per trial; Optuna's says the same
    optuna.logging.disable_default_handler()
    return optuna


def search_folds(table, k: int, seed: int) -> np.ndarray:
    """Folds 1..k of the non-test rows (stratified, groups whole, seeded: the same for every trial); 0 for
    the test rows."""
    folds = np.zeros(len(table), dtype=np.int64)
    rows = table["split"].to_numpy() != TEST
    try:
        folds[rows] = split_utils.assign_folds(table["stratum"].to_numpy()[rows], table["group"].to_numpy()[rows],
                                               k, seed)
    except InputError as err:
        raise InputError(str(err).replace("--cross-validation", "--search-folds")
                         + " (the search's folds hold the non-test rows)") from err
    return folds


def trial_rows(table, folds: np.ndarray, fold: int, split_probabilities, seed: int):
    """The rows of one trial's fold: the other folds train (0) with a validation part carved from them (1),
    groups whole; the fold itself is scored (Ludwig's test split, 2). Never a test row of the run."""
    rows = table[(folds > 0) & (folds != fold)].copy()
    rows["split"] = split_utils.carve_validation(rows["stratum"].to_numpy(), np.zeros(len(rows), dtype=np.int64),
                                                 rows["group"].to_numpy(), split_probabilities, seed)
    scored = table[folds == fold].assign(split=TEST)
    return pd.concat([rows, scored])


def fold_score(history, best_epoch: int, task: str, metric: str) -> float:
    """The scored fold's ``metric`` at the kept epoch (Ludwig's test-split column of the history)."""
    column = "test_" + ludwig_config.VALIDATION_METRICS[task][metric][1]
    if column not in history:
        return float("nan")
    return float(history.loc[history["epoch"] == best_epoch, column].iloc[0])


class SizedCopies:
    """Read paths at each image size: the prepared ones at the run's size, copies made on demand at others."""

    def __init__(self, data, images_dir: str, work: str, prepared_size: int, workers: int):
        self.table, self.images_dir, self.work, self.workers = data.table, images_dir, work, workers
        self.prepared_size = prepared_size
        self.paths = {prepared_size: dict(zip(self.table["image_file"], self.table["read_path"]))}

    def read_paths(self, size: int, rows) -> np.ndarray:
        """Read paths of ``rows`` (a slice of the table) at ``size``, copying the images not yet copied."""
        known = self.paths.setdefault(size, {})
        missing = list(dict.fromkeys(f for f in rows["image_file"] if f not in known))
        if missing:
            checked = check_images(self.images_dir, missing, os.path.join(self.work, f"search-{size}px"),
                                   self.workers, size, health=False, fingerprints=False)
            if checked.bad:  # read once already by dataset_prep: only a file changed under the run
                name, why = next(iter(checked.bad.items()))
                raise InputError(f"image {name} could not be read again: {why}")
            known.update(zip(missing, checked.paths))
        return np.asarray([known[f] for f in rows["image_file"]], dtype=object)


def fingerprint(data, folds: np.ndarray, spec, searched: dict, opts) -> str:
    """What makes trials comparable: the rows and their folds, the metric, the space and the options a
    trial does not change."""
    fixed = {k: v for k, v in opts.__dict__.items() if k not in set(search.OPTION[p] for p in spec.params)
             and k not in ("device", "mixed_precision", "preprocessing_workers", "preprocessing_mode")}
    facts = {"rows": sorted(zip(data.table["image_file"].astype(str), data.table["label"].astype(str),
                                folds.tolist())), "k": spec.folds, "space": searched, "options": fixed}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def sampler(optuna, spec, seed: int):
    """TPE after search.random_start random trials; seeded by ``seed``, or per machine with a shared storage
    (else every machine would draw the same settings)."""
    if spec.storage is not None:
        seed += int(hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:6], 16)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.random_start(spec.trials))


def _study(optuna, spec, direction: str, seed: int, print_: str):
    try:
        study = optuna.create_study(storage=spec.storage, study_name=spec.study, direction=direction,
                                    sampler=sampler(optuna, spec, seed), load_if_exists=True)
    except ValueError as err:  # e.g. an existing study of the other direction
        raise InputError(f"--search-study {spec.study!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors: a URL it cannot open
        first = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"--search-storage cannot be opened ({type(err).__name__}: {first})") from err
    found = study.user_attrs.get(FINGERPRINT)
    if found is None:
        study.set_user_attr(FINGERPRINT, print_)
    elif found != print_:
        raise InputError(f"--search-study {spec.study!r} in --search-storage holds trials of another search (other "
                         "data, folds, space or training options): name another study")
    return study


def run(request, data, images_dir: str, work: str, timer, ddp_workers: int, out: str) -> dict:
    """Run the study, write search_trials.csv, set the winner's settings on ``request.training`` (and the
    table's read paths at its image size); returns run_summary's "search" record."""
    optuna = _optuna()
    spec, opts, table = request.search, request.training, data.table
    _, _, higher = ludwig_config.VALIDATION_METRICS[data.task][opts.validation_metric]
    folds = search_folds(table, spec.folds, opts.random_seed)
    searched = search.space(spec, opts.image_size)
    copies = SizedCopies(data, images_dir, work, opts.image_size, max(1, opts.preprocessing_workers))
    study = _study(optuna, spec, "maximize" if higher else "minimize", opts.random_seed,
                   fingerprint(data, folds, spec, searched, opts))
    # every trial's rows, the same for each: never a test row of the run (the search's one promise)
    fold_tables = [trial_rows(table, folds, fold, request.data.split_probabilities, opts.random_seed)
                   for fold in range(1, spec.folds + 1)]
    if any((table.loc[rows.index, "split"] == TEST).any() for rows in fold_tables):
        raise RuntimeError("a test row reached the search's folds")
    failures = []
    non_test = folds > 0
    if not (table["split"].to_numpy() == TEST).any():
        note = ("the search scored its settings on every row: with no held-out test rows, every number of this "
                "run comes from rows that also chose the settings, and is optimistic")
        log(f"WARNING: {note}")
        data.warnings.append(note)

    def objective(trial):
        params = search.suggest(trial, searched)
        trial_opts = replace(opts, **search.overrides(params))
        started, scores = time.time(), []
        log(f"search trial {trial.number + 1}: {search.describe_params(params)}: training {spec.folds} folds")
        try:
            for fold, rows in enumerate(fold_tables, 1):
                rows = rows.copy()
                rows["read_path"] = copies.read_paths(trial_opts.image_size, rows)
                fold_dir = os.path.join(work, "search", f"trial-{trial.number}-fold-{fold}")
                fit = model_fit.fit(data, rows, trial_opts, fold_dir, os.path.join(fold_dir, "model"), ddp_workers)
                scores.append(fold_score(fit.trained.history, fit.trained.best_epoch, data.task,
                                         opts.validation_metric))
                cross_validation.release_fold(fit, fold_dir)  # one fold's model and files at a time
        except Exception as err:
            failures.append(err.with_traceback(None))  # its frames (a model, batches) freed before the next trial
            gc.collect()
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            log(f"search trial {trial.number + 1}: {search.describe_params(params)}: failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''})")
            raise failures[-1] from None
        finally:
            trial.set_user_attr("fold_scores", scores)
            trial.set_user_attr("seconds", round(time.time() - started, 1))
        score = float(np.mean(scores))
        log(f"search trial {trial.number + 1}: {search.describe_params(params)}: {opts.validation_metric} "
            f"{score:.4f} (folds {', '.join(f'{s:.3f}' for s in scores)}) in {time.time() - started:.0f} s")
        if not math.isfinite(score):
            raise ValueError(f"the folds' {opts.validation_metric} is not a number")
        return score

    log(f"search: {spec.trials} trial(s) of {', '.join(spec.params)}, each {spec.folds} grouped folds of the "
        f"{int(non_test.sum())} non-test images, scored by {opts.validation_metric}")
    with timer.stage(f"searching ({spec.trials} trials x {spec.folds} folds)"):
        study.optimize(objective, n_trials=spec.trials, catch=(Exception,))
    records = [search.trial_record(t.number + 1, t.state.name.lower(), t.params, t.user_attrs.get("fold_scores"),
                                   t.user_attrs.get("seconds"), t.user_attrs.get("error"))
               for t in study.get_trials(deepcopy=False)]
    write_output_csv(pd.DataFrame(search.trials_table(records, spec.folds, searched)),
                     os.path.join(out, search.TRIALS_CSV), ("state", "model", "error"))
    winner = search.choose_winner(records, higher)
    if winner is None:
        raise failures[-1] if failures else InputError("no search trial finished")
    chosen = search.overrides({p: winner[p] for p in searched})
    for field_name, value in chosen.items():
        setattr(opts, field_name, value)
    if opts.image_size != copies.prepared_size:  # every image at the winner's size, as its own run reads it
        table["read_path"] = copies.read_paths(opts.image_size, table)
    groups = int(table.loc[non_test, "group"].nunique())
    record = {"params": list(spec.params), "space": searched, "trials_budget": spec.trials,
              "trials_in_study": len(records), "folds": spec.folds, "metric": opts.validation_metric,
              "higher_is_better": higher, "non_test_rows": int(non_test.sum()), "groups": groups,
              "test_rows": int((~non_test).sum()),
              "scored_on": search.scored_on(opts.validation_metric, spec.folds, int(non_test.sum()), groups),
              "sampler": f"Optuna {optuna.__version__} TPE (the first {search.random_start(spec.trials)} trials "
                         "random" + (f", seed {opts.random_seed})" if spec.storage is None
                                     else ", seeded per machine)"),
              "storage": search.storage_kind(spec.storage), "study": spec.study,
              "trials": records, "winner": {"trial": winner["trial"], "score": winner["score"],
                                            "params": {p: winner[p] for p in searched},
                                            "text": search.describe_params(winner)},
              "chosen": chosen}
    record["description"] = search.describe_choice(record)
    log(f"search: {record['description']}")
    return record
