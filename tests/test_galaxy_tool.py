"""The Galaxy wrapper: lint-clean, every form state renders to CLI flags the command line accepts,
every curated model exists in timm (tests/test_packaging.py checks the staged files)."""

import os
import shlex

import pytest
from galaxy.tool_util.lint import LintContext, lint_tool_source_with
from galaxy.tool_util.parser import get_tool_source
from galaxy.util.template import fill_template

import image_learner_cli
from image_learner import run_request
from image_learner.training import timm_backbone
from conftest import ROOT

TOOL = os.path.join(ROOT, "image_learner.xml")


@pytest.fixture(scope="module")
def source():
    return get_tool_source(TOOL, macro_paths=[ROOT])


def _form(**changes):
    """Parameter values as Galaxy hands them to the Cheetah template (defaults of the form)."""
    values = {
        "__tool_directory__": ROOT, "input_csv": "/data/meta.csv", "image_zip": "/data/images.zip",
        "image_column": "1", "target_column": "2", "task": "auto", "sample_id_column": None,
        "subgroup_columns": None, "tabular_columns": None,
        "data_split": {"method": "random"}, "cross_validation": {"enabled": "preset"},
        "backbone": {"source": "curated", "model_name": "caformer_s18_384"},
        "use_pretrained": "--use-pretrained", "fine_tune": "--fine-tune", "image_size": None,
        "preset": "fast", "augmentation": None,
        "training": {"epochs": None, "early_stop": None, "batch_size": 32, "learning_rate": None, "random_seed": 42,
                     "lr_schedule": "preset",
                     "train_split": 0.7, "validation_split": 0.1, "test_split": 0.2, "class_weights": "preset",
                     "leakage_guard": "--leakage-guard", "positive_label": "", "max_missing_fraction": 0.1,
                     "validation_metric": "auto", "coverage": 0.9, "tta": "preset",
                     "decision_threshold": {"mode": "tuned", "threshold_metric": "youden"},
                     "class_decision": "preset"},
        "data_licence": "not stated",
        "data_health": {"drop_unhealthy": None, "output_csv": False},
        "audit": {"audit": "--audit", "output_label_issues": False, "output_embeddings": False},
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def _without_thread_setting(argv):
    """The command starts by giving PyTorch the job's cores; the rest is the CLI call."""
    assert argv[:3] == ["export", "OMP_NUM_THREADS=${GALAXY_SLOTS:-1}", "&&"], argv[:3]
    return argv[3:]


def _cli_args(source, **changes):
    """Render <command> and parse it with the real CLI parser (unknown flags would fail here)."""
    command = fill_template(source.parse_command(), context=_form(**changes))
    argv = _without_thread_setting(shlex.split(command.replace("\\\n", " ")))
    assert argv[0] == "python" and argv[1] == os.path.join(ROOT, "image_learner_cli.py")
    assert argv[-1] == "${GALAXY_SLOTS:-2}"  # left for the shell: the job's core count
    return image_learner_cli.build_parser().parse_args(argv[2:-1] + ["1"]), argv


@pytest.mark.parametrize("tool", ["image_learner.xml", "image_learner_predict.xml"])
def test_the_tools_lint_clean(tool):
    ctx = LintContext(level="warn")
    lint_tool_source_with(ctx, get_tool_source(os.path.join(ROOT, tool), macro_paths=[ROOT]))
    assert not ctx.error_messages and not ctx.warn_messages, ctx.error_messages + ctx.warn_messages


@pytest.mark.parametrize("metadata, expected", [
    ({"has_table": "no"}, []),
    ({"has_table": "yes", "input_csv": "/d/t.csv", "image_column": "1", "target_column": "2"},
     ["--csv-file", "/d/t.csv", "--image-column", "1", "--target-column", "2"]),
    ({"has_table": "yes", "input_csv": "/d/t.csv", "image_column": "3", "target_column": None},
     ["--csv-file", "/d/t.csv", "--image-column", "3", "--no-evaluate"]),
])
def test_predict_form_maps_to_the_predict_subcommand(metadata, expected):
    source = get_tool_source(os.path.join(ROOT, "image_learner_predict.xml"), macro_paths=[ROOT])
    context = {"__tool_directory__": ROOT, "model": "/d/model.zip", "image_zip": "/d/new.zip", "metadata": metadata,
               "abstain_above_set_size": None, "tta": "model"}
    argv = _without_thread_setting(shlex.split(fill_template(source.parse_command(), context=context)))
    assert argv[:3] == ["python", os.path.join(ROOT, "image_learner_cli.py"), "predict"]
    assert argv[3:] == ["--model", "/d/model.zip", "--image-zip", "/d/new.zip", "--output-dir", "outputs", *expected]
    image_learner_cli.build_predict_parser().parse_args(argv[3:])


def test_default_form_is_the_tutorial_run(source):
    args, argv = _cli_args(source)
    assert (args.csv_file, args.image_zip, args.output_dir) == ("/data/meta.csv", "/data/images.zip", "outputs")
    assert (args.image_column, args.target_column, args.task) == ("1", "2", "auto")
    assert args.sample_id_column is None
    assert args.random_split and args.split_column is None  # the form's default: random, as its help says
    assert args.model_name == "caformer_s18_384" and args.use_pretrained and args.fine_tune
    assert args.image_size is None  # the backbone's own size
    # the preset's options are left to --preset (the form's default: fast, the long-standing defaults)
    assert args.preset == "fast"
    assert (args.augmentation, args.epochs, args.early_stop, args.learning_rate, args.lr_schedule,
            args.class_weights, args.tta) == (None,) * 7
    request = run_request.from_args(args)
    assert (request.training.epochs, request.training.early_stop, request.training.learning_rate) == (30, 5, 0.001)
    assert (request.training.augmentation, request.training.class_weights) == ("random_horizontal_flip", "none")
    assert (args.batch_size, args.random_seed) == (32, 42)
    assert args.split_probabilities == [0.7, 0.1, 0.2]
    assert args.leakage_guard and args.positive_label is None
    assert args.max_missing_fraction == 0.1
    assert (args.validation_metric, args.threshold_metric, args.threshold) == ("auto", "youden", None)
    assert args.cross_validation is None and args.class_decision is None and args.hold_out_test is None  # the preset's
    assert (request.data.cross_validation, request.training.class_decision) == (0, "argmax")  # fast: off


def test_cross_validation_maps_to_its_flag(source):
    args, _ = _cli_args(source, cross_validation={"enabled": "yes", "folds": 4, "ensemble": "refit",
                                                  "hold_out_test": "no"})
    assert args.cross_validation == 4 and args.random_split and args.ensemble == "refit"
    assert args.hold_out_test is False


@pytest.mark.parametrize("enabled, folds, held_out", [("preset", 3, True), ("no", 0, True), ("yes", 5, True)])
def test_the_best_presets_folds_unless_the_form_says_otherwise(source, enabled, folds, held_out):
    args, _ = _cli_args(source, preset="best", cross_validation={"enabled": enabled, "folds": 5, "ensemble": "refit",
                                                                 "hold_out_test": "preset"})
    request = run_request.from_args(args)
    assert (request.data.cross_validation, request.data.hold_out_test) == (folds, held_out)
    assert request.training.class_decision == "balanced"
    args, _ = _cli_args(source, preset="best", training={"class_decision": "argmax"})
    assert run_request.from_args(args).training.class_decision == "argmax"


def test_every_other_field_maps_to_its_flag(source):
    args, _ = _cli_args(
        source, sample_id_column="3", task="regression", data_split={"method": "column", "split_column": "5"},
        backbone={"source": "custom", "model_name": "resnet18.a1_in1k"},
        use_pretrained="--no-use-pretrained", fine_tune="--no-fine-tune", image_size=96, augmentation="none",
        preset="best",
        training={"epochs": 2, "early_stop": 0, "batch_size": 8, "learning_rate": 0.0005, "random_seed": 7,
                  "lr_schedule": "constant", "tta": "flips",
                  "train_split": 0.6, "validation_split": 0.2, "test_split": 0.2, "class_weights": "balanced",
                  "leakage_guard": "--no-leakage-guard", "positive_label": "malignant", "max_missing_fraction": 0.5,
                  "validation_metric": "loss", "decision_threshold": {"mode": "fixed", "threshold": 0.3}})
    assert (args.sample_id_column, args.split_column, args.random_split) == ("3", "5", False)
    assert args.task == "regression"
    assert args.model_name == "resnet18.a1_in1k" and not args.use_pretrained and not args.fine_tune
    assert args.image_size == 96 and args.augmentation == "none" and args.preset == "best"
    assert (args.epochs, args.early_stop, args.batch_size, args.learning_rate, args.random_seed) == (2, 0, 8, 0.0005, 7)
    assert (args.lr_schedule, args.tta) == ("constant", "flips")
    assert args.split_probabilities == [0.6, 0.2, 0.2]
    assert args.class_weights == "balanced" and not args.leakage_guard and args.positive_label == "malignant"
    assert args.max_missing_fraction == 0.5
    assert (args.validation_metric, args.threshold_metric, args.threshold) == ("loss", None, 0.3)


def test_each_validation_metric_and_threshold_mode_of_the_form_parses_and_has_a_galaxy_test(source):
    select = next(p for p in source.root.iter("param") if p.get("argument") == "--validation-metric")
    for metric in (o.get("value") for o in select.iter("option")):
        assert _cli_args(source, training={"validation_metric": metric})[0].validation_metric == metric
    policies = next(p for p in source.root.iter("param") if p.get("argument") == "--threshold-metric")
    for policy in (o.get("value") for o in policies.iter("option")):
        args, _ = _cli_args(source, training={"decision_threshold": {"mode": "tuned", "threshold_metric": policy}})
        assert (args.threshold_metric, args.threshold) == (policy, None)
    modes, tested = set(), set()
    for test in source.root.find("tests"):
        for cond in test.iter("conditional"):
            if cond.get("name") == "decision_threshold":
                modes |= {p.get("value") for p in cond.iter("param") if p.get("name") == "mode"}
                tested |= {p.get("name") for p in cond.iter("param")}
        tested |= {p.get("name") for p in test.iter("param")}
    assert modes == {"tuned", "fixed"}
    assert {"validation_metric", "threshold_metric", "threshold"} <= tested


def test_the_cli_refuses_a_fixed_and_a_tuned_threshold_at_once():
    with pytest.raises(SystemExit) as exit_info:
        image_learner_cli.main(["--csv-file", "m.csv", "--image-zip", "i.zip", "--output-dir", "o",
                                "--threshold", "0.3", "--threshold-metric", "f1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("data_split, flags", [
    ({"method": "random"}, ["--random-split"]),
    ({"method": "column", "split_column": "5"}, ["--split-column", "5"]),
])
def test_how_to_split_maps_to_exactly_one_flag(source, data_split, flags):
    _, argv = _cli_args(source, data_split=data_split)
    split_flags = [a for a in argv if a in ("--random-split", "--split-column")]
    assert split_flags == flags[:1]
    assert argv[argv.index(flags[0]):argv.index(flags[0]) + len(flags)] == flags


def test_both_ways_to_split_have_a_galaxy_test(source):
    methods = set()
    for test in source.root.find("tests"):
        for cond in test.iter("conditional"):
            if cond.get("name") == "data_split":
                methods |= {p.get("value") for p in cond.iter("param") if p.get("name") == "method"}
    select = next(p for p in source.root.iter("param") if p.get("name") == "method")
    assert methods == {o.get("value") for o in select.iter("option")} == {"random", "column"}


def test_the_cli_refuses_two_ways_to_split_at_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        image_learner_cli.main(["--csv-file", "m.csv", "--image-zip", "i.zip", "--output-dir", "o",
                                "--random-split", "--split-column", "split"])
    assert exit_info.value.code == 2
    assert "argument --split-column: not allowed with argument --random-split" in capsys.readouterr().err


def test_several_augmentations_are_passed_comma_separated(source):
    args, _ = _cli_args(source, augmentation="random_horizontal_flip,random_vertical_flip,random_rotate")
    assert args.augmentation == "random_horizontal_flip,random_vertical_flip,random_rotate"


def test_every_curated_model_is_a_timm_model(source):
    tree = source.root
    select = next(p for p in tree.iter("param") if p.get("name") == "model_name" and p.get("type") == "select")
    names = [o.get("value") for o in select.iter("option")]
    assert len(names) >= 10 and names[0] == "caformer_s18_384"
    for name in names:
        timm_backbone.resolve_model_name(name)  # raises for an unknown name


def test_the_data_licence_maps_to_its_flag_with_the_forms_default(source):
    licence = next(p for p in source.root.iter("param") if p.get("argument") == "--data-licence")
    assert licence.get("type") == "text" and licence.get("value") == "not stated"  # tool tests need no value
    assert _cli_args(source)[0].data_licence == "not stated"
    args, _ = _cli_args(source, data_licence="CC BY-NC 4.0, ISIC archive")
    assert args.data_licence == "CC BY-NC 4.0, ISIC archive"


def test_subgroup_columns_map_to_their_flag(source):
    """Galaxy hands a multiple data_column over as comma-separated 1-based indices; the CLI resolves them."""
    args, _ = _cli_args(source)
    assert args.subgroup_columns == ""  # none by default
    args, argv = _cli_args(source, subgroup_columns="4,6")
    assert args.subgroup_columns == "4,6" and "--subgroup-columns" in argv
    import pandas as pd
    from image_learner.evaluation import subgroups

    raw = pd.DataFrame(columns=["image_path", "label", "lesion_id", "sex", "age", "localization"])
    names = subgroups.resolve_columns(raw, subgroups.parse_spec(args.subgroup_columns), "label", "image_path")
    assert names == ("sex", "localization")


@pytest.mark.parametrize("coverage", [0.9, 0.8, 0])
def test_the_coverage_field_maps_to_its_flag(source, coverage):
    args, _ = _cli_args(source, training={**_form()["training"], "coverage": coverage})
    assert args.coverage == coverage


def test_the_default_form_asks_for_90_percent_sets(source):
    args, _ = _cli_args(source)
    assert args.coverage == 0.9


@pytest.mark.parametrize("k, expected", [(None, None), (2, 2)])
def test_the_abstain_field_maps_to_its_predict_flag(k, expected):
    source = get_tool_source(os.path.join(ROOT, "image_learner_predict.xml"), macro_paths=[ROOT])
    context = {"__tool_directory__": ROOT, "model": "/d/model.zip", "image_zip": "/d/new.zip",
               "metadata": {"has_table": "no"}, "abstain_above_set_size": k, "tta": "model"}
    argv = _without_thread_setting(shlex.split(fill_template(source.parse_command(), context=context)))
    args = image_learner_cli.build_predict_parser().parse_args(argv[3:])
    assert args.abstain_above_set_size == expected
    assert ("--abstain-above-set-size" in argv) == (k is not None)


@pytest.mark.parametrize("value, expected", [("--audit", True), ("--no-audit", False)])
def test_the_audit_field_maps_to_its_flag(source, value, expected):
    args, argv = _cli_args(source, audit={"audit": value})
    assert args.audit is expected and value in argv


def test_the_audit_tables_are_outputs_filtered_by_the_form_and_tested(source):
    """label_issues.csv and embeddings.csv come out only when asked for, and only while --audit runs
    (label issues: not for a regression, which writes none); a Galaxy test asks for both."""
    outputs = {d.get("name"): d for d in source.root.find("outputs").iter("data")}
    for name, path, switch in (("output_label_issues", "outputs/label_issues.csv", "output_label_issues"),
                               ("output_embeddings", "outputs/embeddings.csv", "output_embeddings")):
        data = outputs[name]
        assert data.get("from_work_dir") == path and data.get("format") == "csv"
        condition = data.find("filter").text
        assert f"audit['{switch}']" in condition and "audit['audit']" in condition
        context = {"audit": {"audit": True, switch: True}, "task": "auto"}
        assert eval(condition, {}, context)  # noqa: S307 (the XML's own filter expression)
        assert not eval(condition, {}, {**context, "audit": {"audit": False, switch: True}})
        assert not eval(condition, {}, {**context, "audit": {"audit": True, switch: False}})
    assert not eval(outputs["output_label_issues"].find("filter").text, {},
                    {"audit": {"audit": True, "output_label_issues": True}, "task": "regression"})
    tested = {o.get("name") for test in source.root.find("tests") for o in test.iter("output")}
    assert {"output_label_issues", "output_embeddings"} <= tested


@pytest.mark.parametrize("mode", ["none", "flips", "dihedral"])
def test_the_tta_field_maps_to_its_flag(source, mode):
    args, _ = _cli_args(source, training={**_form()["training"], "tta": mode})
    assert args.tta == mode


@pytest.mark.parametrize("mode, expected", [("model", None), ("none", "none"), ("dihedral", "dihedral")])
def test_the_predict_tta_field_maps_to_its_flag_or_the_models_own(mode, expected):
    source = get_tool_source(os.path.join(ROOT, "image_learner_predict.xml"), macro_paths=[ROOT])
    context = {"__tool_directory__": ROOT, "model": "/d/model.zip", "image_zip": "/d/new.zip",
               "metadata": {"has_table": "no"}, "abstain_above_set_size": None, "tta": mode}
    argv = _without_thread_setting(shlex.split(fill_template(source.parse_command(), context=context)))
    assert image_learner_cli.build_predict_parser().parse_args(argv[3:]).tta == expected


def test_tabular_columns_map_to_their_flag(source):
    """Metadata fusion (issue 25): the form's columns reach --tabular-columns as 1-based indices, which the CLI
    resolves to the CSV's names and kinds; none by default."""
    args, argv = _cli_args(source)
    assert args.tabular_columns == "" and "--tabular-columns" not in argv
    args, argv = _cli_args(source, tabular_columns="5,4,6")
    assert args.tabular_columns == "5,4,6" and "--tabular-columns" in argv
    import pandas as pd
    from image_learner.data import tabular

    raw = pd.DataFrame({"image_path": ["a.png", "b.png"], "label": ["x", "y"], "lesion_id": ["1", "2"],
                        "sex": ["male", ""], "age": ["40", "55.5"], "localization": ["back", "face"]})
    assert tabular.resolve_columns(raw, tabular.parse_spec(args.tabular_columns), {"image": "image_path"}) == (
        ("age", "number"), ("sex", "category"), ("localization", "category"))


@pytest.mark.parametrize("ensemble", ["folds", "folds+refit"])
def test_the_fold_ensemble_maps_to_its_flag(source, ensemble):
    args, _ = _cli_args(source, cross_validation={"enabled": "yes", "folds": 3, "ensemble": ensemble,
                                                  "hold_out_test": "yes"})
    assert args.cross_validation == 3 and args.ensemble == ensemble and args.hold_out_test is True
    assert _cli_args(source)[0].ensemble == "refit"  # without cross-validation: no flag, the default


@pytest.mark.parametrize("rule", ["argmax", "balanced"])
def test_the_class_decision_field_maps_to_its_flag(source, rule):
    args, _ = _cli_args(source, training={**_form()["training"], "class_decision": rule})
    assert args.class_decision == rule
