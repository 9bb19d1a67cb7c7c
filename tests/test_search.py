"""--search: the pure core (options and their refusals, the space, trial records, the winner, the folds and
trial rows that never hold a test row, the study's fingerprint), the CLI's refusals (exit 2), and one tiny
real search (test_efficientnet, 2 trials x 2 folds, 1 epoch, the demo split column's 28 test rows held out)."""

import json
import os
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

import image_learner_cli
from conftest import DEMO_ZIP, TEST_DATA
from image_learner.errors import InputError
from image_learner.training import search, search_run

SPLIT_CSV = os.path.join(TEST_DATA, "ham10000_demo_split_column.csv")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1", "--no-audit"]


# --- the options ---------------------------------------------------------------------------------------------

def test_spec_keeps_the_search_order_drops_repeats_and_fills_defaults():
    spec = search.parse_spec(" image_size, lr,lr ")
    assert spec == search.SearchSpec(("lr", "image_size"), 8, 3, (), (), None, "image-learner-search")
    spec = search.parse_spec("model,lr", 3, 2, "b, a,b", None, "sqlite:///x.db", " mine ")
    assert (spec.params, spec.trials, spec.folds, spec.models, spec.storage, spec.study) == (
        ("lr", "model"), 3, 2, ("b", "a"), "sqlite:///x.db", "mine")
    assert search.parse_spec("image_size", image_sizes="128,96,128").image_sizes == (96, 128)
    assert search.parse_spec(None) is None and search.parse_spec("") is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(params="lr,depth"), "--search 'depth' is not searchable; choose from lr, image_size, model"),
    (dict(params="lr", trials=0), "--search-trials must be between 1 and 1000, got 0"),
    (dict(params="lr", folds=1), "--search-folds must be between 2 and 20, got 1"),
    (dict(params="model"), "--search model needs at least 2 backbones in --search-models"),
    (dict(params="model", models="resnet18"), "--search model needs at least 2 backbones"),
    (dict(params="lr", models="a,b"), "--search-models is for --search model"),
    (dict(params="lr", image_sizes="64,96"), "--search-image-sizes is for --search image_size"),
    (dict(params="image_size", image_sizes="64,x"), "--search-image-sizes must be whole numbers of pixels"),
    (dict(params="image_size", image_sizes="8,64"), "--search-image-sizes must be between 16 and 1024 pixels, got 8"),
    (dict(params="image_size", image_sizes="64,64"), "needs at least 2 sizes"),
    (dict(params="lr", storage="search.db"), "--search-storage 'search.db' is not a database URL"),
    (dict(params="lr", study=" "), "--search-study must not be empty"),
    (dict(params=None, trials=4), "--search-trials needs --search"),
    (dict(params="", storage="sqlite:///x.db"), "--search-storage needs --search"),
])
def test_bad_search_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(InputError, match=None) as err:
        search.parse_spec(**kwargs)
    assert message in str(err.value)


def test_default_sizes_are_the_runs_own_and_half_and_three_quarters_of_it():
    assert search.default_sizes(224) == (112, 168, 224)
    assert search.default_sizes(384) == (192, 288, 384)
    assert search.default_sizes(20) == (16, 20)  # the run's own size as it is; at least 16
    assert search.default_sizes(32) == (16, 24, 32)


def test_parameters_in_words_skip_those_not_searched():
    assert search.describe_params({"model": "m", "lr": 0.000423, "image_size": None}) == "lr 0.000423, model m"


def test_space_and_overrides():
    spec = search.parse_spec("lr,image_size,model", models="a,b")
    assert search.space(spec, 224) == {"lr": (1e-5, 3e-3), "image_size": [112, 168, 224], "model": ["a", "b"]}
    assert search.space(search.parse_spec("lr"), 224) == {"lr": (1e-5, 3e-3)}
    assert search.overrides({"lr": 1e-4, "image_size": 96, "model": "b"}) == {
        "learning_rate": 1e-4, "image_size": 96, "model_name": "b"}


def _sampled(seed: int, n: int = 6) -> list[dict]:
    spec = search.parse_spec("lr,image_size,model", n, models="a,b")
    searched = search.space(spec, 128)
    study = optuna.create_study(sampler=search_run.sampler(optuna, spec, seed), direction="maximize")
    drawn = []

    def objective(trial):
        params = search.suggest(trial, searched)
        drawn.append(params)
        return params["lr"] * params["image_size"]

    study.optimize(objective, n_trials=n)
    return drawn


def test_the_same_seed_draws_the_same_trials_and_every_value_is_in_the_space():
    first, again, other = _sampled(42), _sampled(42), _sampled(7)
    assert first == again and first != other  # 3 random draws, then 3 of TPE: both repeat with the seed
    assert search.random_start(8) == 4 and search.random_start(3) == 2 and search.random_start(100) == 10
    assert search_run.sampler(optuna, search.parse_spec("lr", 8), 1)._n_startup_trials == 4
    assert search_run.sampler(optuna, search.parse_spec("lr", 100), 1)._n_startup_trials == 10
    for params in first:
        assert 1e-5 <= params["lr"] <= 3e-3 and params["image_size"] in (64, 96, 128) and params["model"] in "ab"


# --- trial records and the winner ------------------------------------------------------------------------------

def test_a_trial_scores_the_mean_of_its_folds_only_when_complete_and_finite():
    record = search.trial_record(3, "complete", {"lr": 1e-4}, [0.5, 0.7], 12.345)
    assert record == {"trial": 3, "state": "complete", "lr": 1e-4, "image_size": None, "model": None,
                      "fold_scores": [0.5, 0.7], "score": pytest.approx(0.6), "seconds": 12.3, "error": None}
    assert search.trial_record(1, "complete", {}, [0.5, float("nan")], 1)["score"] is None
    failed = search.trial_record(2, "fail", {"lr": 1e-3}, [0.5], 3, "RuntimeError: CUDA out of memory\nmore")
    assert failed["score"] is None and failed["error"] == "RuntimeError: CUDA out of memory"


def _records(scores):
    return [search.trial_record(i, "complete" if s is not None else "fail", {"lr": 10.0 ** -i},
                                [s] if s is not None else [], 1.0) for i, s in enumerate(scores, 1)]


def test_the_winner_is_the_best_complete_trial_in_the_metrics_direction_earliest_on_ties():
    records = _records([0.4, None, 0.7, 0.2, 0.7])
    assert search.choose_winner(records, higher_is_better=True)["trial"] == 3  # 5 ties with 3: the earlier
    assert search.choose_winner(records, higher_is_better=False)["trial"] == 4  # mae, loss: the lowest
    assert search.choose_winner(_records([None, None]), True) is None


def test_the_trials_table_has_a_column_per_fold_and_searched_parameter():
    records = _records([0.4, None])
    rows = search.trials_table(list(reversed(records)), 2, ["lr"])
    assert [list(r) for r in rows] == [["trial", "state", "lr", "fold_1", "fold_2", "score", "seconds", "error"]] * 2
    assert [(r["trial"], r["state"], r["fold_1"], r["fold_2"], r["score"]) for r in rows] == [
        (1, "complete", 0.4, None, 0.4), (2, "fail", None, None, None)]


def test_the_storage_is_recorded_by_its_kind_never_its_url():
    assert search.storage_kind("postgresql+psycopg2://user:secret@host/db") == "postgresql"
    assert search.storage_kind("sqlite:///s.db") == "sqlite" and search.storage_kind(None) == "memory"


# --- folds and trial rows: never a test row ---------------------------------------------------------------------

def _table(n_groups=24, test_every=4):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(n_groups), 2)  # two images per lesion
    labels = np.where(groups % 2 == 0, "a", "b")
    split = np.where(groups % test_every == 0, 2, np.where(groups % 7 == 1, 1, 0))
    return pd.DataFrame({"image_file": [f"img{i}.png" for i in range(len(groups))], "label": labels,
                         "stratum": labels, "group": groups.astype(str), "split": split,
                         "read_path": [f"/prepared/img{i}.png" for i in range(len(groups))],
                         "noise": rng.random(len(groups))})


def test_search_folds_hold_every_non_test_row_once_groups_whole_and_no_test_row():
    table = _table()
    folds = search_run.search_folds(table, 3, 42)
    test = table["split"].to_numpy() == 2
    assert (folds[test] == 0).all() and set(folds[~test]) == {1, 2, 3}
    assert table.assign(fold=folds).groupby("group")["fold"].nunique().max() == 1
    assert (search_run.search_folds(table, 3, 42) == folds).all()  # the same folds for every trial


def test_trial_rows_train_on_other_folds_score_their_own_and_exclude_every_test_row():
    table = _table()
    folds = search_run.search_folds(table, 3, 42)
    test_images = set(table.loc[table["split"] == 2, "image_file"])
    seen = set()
    for fold in (1, 2, 3):
        rows = search_run.trial_rows(table, folds, fold, (0.7, 0.1, 0.2), 42)
        assert not test_images & set(rows["image_file"])
        scored = rows[rows["split"] == 2]
        assert set(scored.index) == set(np.flatnonzero(folds == fold))
        assert set(rows[rows["split"] != 2].index) == set(np.flatnonzero((folds > 0) & (folds != fold)))
        assert (rows["split"] == 1).any() and (rows["split"] == 0).any()
        seen |= set(scored["image_file"])
    assert seen == set(table["image_file"]) - test_images


def test_too_many_search_folds_are_refused_naming_the_search_option():
    with pytest.raises(InputError, match="--search-folds 20 needs at least 20 groups of every class"):
        search_run.search_folds(_table(), 20, 42)


def test_a_fold_is_scored_at_its_kept_epoch():
    history = pd.DataFrame({"epoch": [1, 2, 3], "test_balanced_accuracy": [0.3, 0.6, 0.5],
                            "test_mean_absolute_error": [9.0, 7.0, 8.0]})
    assert search_run.fold_score(history, 2, "multiclass", "balanced_accuracy") == 0.6
    assert search_run.fold_score(history, 3, "regression", "mae") == 8.0
    assert np.isnan(search_run.fold_score(history, 1, "binary", "roc_auc"))


def test_a_shared_study_of_another_search_is_refused(tmp_path):
    spec = search.parse_spec("lr", storage=f"sqlite:///{tmp_path / 's.db'}", study="s")
    first = search_run._study(optuna, spec, "maximize", 42, "print-1")
    first.enqueue_trial({"lr": 1e-4})
    assert search_run._study(optuna, spec, "maximize", 42, "print-1").user_attrs[search_run.FINGERPRINT] == "print-1"
    with pytest.raises(InputError, match="--search-study 's' in --search-storage holds trials of another search"):
        search_run._study(optuna, spec, "maximize", 42, "print-2")
    bad = search.parse_spec("lr", storage=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(InputError, match="--search-storage cannot be opened"):
        search_run._study(optuna, bad, "maximize", 42, "print-1")


def test_the_fingerprint_changes_with_the_folds_and_the_fixed_options():
    from image_learner.training.ludwig_config import TrainingOptions

    table = _table()
    data = type("Data", (), {"table": table})()
    spec = search.parse_spec("lr", folds=3)
    opts = TrainingOptions("m", 64)
    folds = search_run.search_folds(table, 3, 42)
    base = search_run.fingerprint(data, folds, spec, {"lr": (1e-5, 3e-3)}, opts)
    assert base == search_run.fingerprint(data, folds, spec, {"lr": (1e-5, 3e-3)},
                                          TrainingOptions("m", 64, learning_rate=0.5, device="cpu"))
    assert base != search_run.fingerprint(data, search_run.search_folds(table, 3, 7), spec, {"lr": (1e-5, 3e-3)}, opts)
    assert base != search_run.fingerprint(data, folds, spec, {"lr": (1e-5, 3e-3)}, TrainingOptions("m", 64, epochs=2))


def _driver(tmp_path, monkeypatch, fails, trials=6):
    """search_run.run with model_fit.fit replaced by a stand-in (no training): a fold's score is a function of
    the learning rate, and ``fails(lr)`` raises an out-of-memory error; returns (record, options, rows seen)."""
    from types import SimpleNamespace

    from image_learner.run_files import StageTimer
    from image_learner.training.ludwig_config import TrainingOptions

    seen = []

    def fake_fit(data, rows, opts, work_dir, model_dir, ddp_workers=0):
        seen.append(rows)
        if fails(opts.learning_rate):
            raise MemoryError(f"out of memory at lr {opts.learning_rate:g}")
        score = 1 - abs(np.log10(opts.learning_rate) + 4) / 2  # best at 1e-4
        history = pd.DataFrame({"epoch": [1, 2], "test_balanced_accuracy": [0.0, score]})
        return SimpleNamespace(trained=SimpleNamespace(history=history, best_epoch=2, ludwig_model=object()))

    monkeypatch.setattr(search_run.model_fit, "fit", fake_fit)
    table = _table().assign(image=lambda t: t["image_file"])
    data = SimpleNamespace(table=table, task="multiclass", warnings=[])
    opts = TrainingOptions("m", 32, validation_metric="balanced_accuracy")
    request = SimpleNamespace(search=search.parse_spec("lr", trials, 2), training=opts,
                              data=SimpleNamespace(split_probabilities=(0.7, 0.1, 0.2)))
    record = search_run.run(request, data, str(tmp_path), str(tmp_path), StageTimer(), 0, str(tmp_path))
    return record, opts, seen, table


def test_failed_trials_are_recorded_and_the_best_complete_one_wins(tmp_path, monkeypatch):
    record, opts, seen, table = _driver(tmp_path, monkeypatch, fails=lambda lr: lr > 3e-4)
    states = [t["state"] for t in record["trials"]]
    assert "fail" in states and "complete" in states and len(states) == 6
    failed = [t for t in record["trials"] if t["state"] == "fail"]
    assert all(t["error"].startswith("MemoryError: out of memory at lr") and t["score"] is None for t in failed)
    complete = [t for t in record["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["score"])
    assert record["winner"]["trial"] == best["trial"] and opts.learning_rate == best["lr"] <= 3e-4
    assert record["chosen"] == {"learning_rate": best["lr"]} and record["test_rows"] == 12
    csv = pd.read_csv(tmp_path / "search_trials.csv")
    assert list(csv["state"]) == states and csv["error"].notna().sum() == len(failed)
    test_images = set(table.loc[table["split"] == 2, "image_file"])
    assert seen and all(not test_images & set(rows["image_file"]) for rows in seen)


def test_when_every_trial_fails_the_run_stops_with_the_error(tmp_path, monkeypatch):
    with pytest.raises(MemoryError, match="out of memory at lr"):
        _driver(tmp_path, monkeypatch, fails=lambda lr: True, trials=2)


# --- the command line ---------------------------------------------------------------------------------------------

def test_the_parser_leaves_search_off_unless_asked():
    base = ["--csv-file", "m.csv", "--image-zip", "i.zip", "--output-dir", "o"]
    assert search.spec_from_args(image_learner_cli.build_parser().parse_args(base)) is None
    spec = search.spec_from_args(image_learner_cli.build_parser().parse_args(
        base + ["--search", "lr", "--search-folds", "4", "--search-storage", "sqlite:///s.db"]))
    assert (spec.params, spec.trials, spec.folds, spec.storage, spec.study) == (
        ("lr",), 8, 4, "sqlite:///s.db", "image-learner-search")


@pytest.mark.parametrize("extra, message", [
    (["--search", "lr,dropout"], "--search 'dropout' is not searchable"),
    (["--search", "lr", "--search-folds", "1"], "--search-folds must be between 2 and 20, got 1"),
    (["--search-trials", "3"], "--search-trials needs --search"),
    (["--search", "model", "--search-models", "test_efficientnet,no_such_net_xyz"], "--search-models: "),
])
def test_bad_search_options_exit_2_before_any_training(tmp_path, capsys, extra, message):
    code = image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "run"), *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "run" / "run_summary.json").exists()


def test_searching_the_model_with_a_local_weights_file_is_refused(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    code = image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "run"), *TINY, "--pretrained-weights", str(weights),
                                   "--search", "model", "--search-models", "test_efficientnet,test_resnet"])
    err = capsys.readouterr().err
    assert code == 2 and "--search model cannot use --pretrained-weights" in err, err[-2000:]


def test_search_without_optuna_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    code = image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "run"), *TINY, "--search", "lr"])
    err = capsys.readouterr().err
    assert code == 2 and "--search needs the optuna package: pip install 'image-learner[search]'" in err, err[-2000:]


# --- one tiny real search -------------------------------------------------------------------------------------------

def test_a_tiny_search_trains_the_winner_and_no_trial_sees_a_test_row(tmp_path, monkeypatch):
    """2 trials of lr and image size (24 or 32 px) x 2 lesion-grouped folds of the 112 non-test rows; every row
    a trial trained or was scored on is recorded: none of the 28 test rows is among them."""
    trial_images = []
    fit = search_run.model_fit.fit

    def recording_fit(data, rows, opts, work_dir, *args, **kwargs):
        if f"{os.sep}search{os.sep}" in work_dir:
            trial_images.extend(rows["image"])
        return fit(data, rows, opts, work_dir, *args, **kwargs)

    monkeypatch.setattr(search_run.model_fit, "fit", recording_fit)
    out = tmp_path / "run"
    assert image_learner_cli.main(["--csv-file", SPLIT_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, "--sample-id-column", "lesion_id", "--search", "lr,image_size",
                                   "--search-trials", "2", "--search-folds", "2",
                                   "--search-image-sizes", "24,32"]) == 0
    split = pd.read_csv(SPLIT_CSV)
    test_images = set(split.loc[split["split"] == "test", "image_path"])
    assert len(test_images) == 28 and trial_images
    assert not test_images & set(trial_images)
    assert set(trial_images) == set(split["image_path"]) - test_images  # each non-test row, in 2 trials x 2 folds
    assert len(trial_images) == 2 * 2 * 112  # each fit: the other fold trains, its own is scored

    record = json.loads((out / "run_summary.json").read_text())
    found, summary = record["search"], record
    assert (found["params"], found["folds"], found["trials_budget"], found["metric"]) == (
        ["lr", "image_size"], 2, 2, "balanced_accuracy")
    assert (found["non_test_rows"], found["test_rows"], found["storage"]) == (112, 28, "memory")
    assert "over 2 grouped folds of the 112 non-test rows" in found["scored_on"]
    trials = pd.read_csv(out / "search_trials.csv")
    assert list(trials.columns) == ["trial", "state", "lr", "image_size", "fold_1", "fold_2", "score", "seconds",
                                    "error"]
    assert list(trials["trial"]) == [1, 2] and (trials["state"] == "complete").all()
    assert trials["score"].to_numpy() == pytest.approx(trials[["fold_1", "fold_2"]].mean(axis=1).to_numpy())
    assert set(trials["image_size"]) <= {24, 32}
    best = trials.loc[trials["score"].idxmax()]  # the first best: idxmax takes the earliest of ties
    assert found["winner"]["trial"] == best["trial"]
    # the winner's settings trained the delivered model
    assert summary["training"]["learning_rate"] == pytest.approx(best["lr"])
    assert "learning_rate" not in summary["training"]["options_from_preset"]  # the search set it, not the preset
    assert "epochs" not in summary["training"]["options_from_preset"]  # TINY types it
    assert "class_weights" in summary["training"]["options_from_preset"]
    assert summary["model"]["image_size"] == best["image_size"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trainer"]["learning_rate"] == pytest.approx(best["lr"])
    assert config["input_features"][0]["preprocessing"]["height"] == best["image_size"]
    assert "chosen by a search" in (out / "model" / "MODEL_CARD.md").read_text()
    report = (out / "report.html").read_text()
    assert 'id="search"' in report and "<b>chosen</b>" in report
    assert f"<b>{found['winner']['text']}</b>" in report and "The 28 held-out test rows were in no trial" in report
    assert found["winner"]["text"] == search.describe_params({"lr": best["lr"], "image_size": best["image_size"]})
