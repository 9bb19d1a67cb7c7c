"""Metadata fusion (--tabular-columns, issue 25 item 1): option checks, statistics from training rows only,
the unknown-category slot, the Ludwig features, and a fused train -> predict round trip (timm's tiny
test_efficientnet at 32 px, 1 epoch) with predict's column and manifest checks."""

import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import image_learner_cli
from conftest import CLI, DEMO_CSV, DEMO_ZIP, TEST_DATA, make_zip
from image_learner.data import tabular
from image_learner.errors import InputError
from image_learner.model import model_archive, model_manifest
from image_learner.training import ludwig_config, model_fit

AGE_CSV = os.path.join(TEST_DATA, "ham10000_demo_age.csv")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]
SITES = ["back", "face", "trunk", "scalp", "hand"]


def _raw(**columns) -> pd.DataFrame:
    return pd.DataFrame({k: [str(v) for v in vals] for k, vals in columns.items()})


RESERVED = {"image": "image_path", "label": "label", "sample id": "lesion_id", "split": "split"}


def _csv() -> pd.DataFrame:
    n = 6
    return _raw(image_path=[f"{k}.png" for k in range(n)], label=list("abcabc"), lesion_id=list("uvwxyz"),
                split=["train"] * 4 + ["test"] * 2, age=[30, 45.5, "", "NA", 70, 1e3],
                sex=["male", "female", "unknown", "", "male", "female"], code=["1", "2", "x", "3", "4", "5"])


@pytest.mark.parametrize("spec, message", [
    (",", "names no column"), ("age,,sex", "empty column name"), (" , ", "names no column")])
def test_a_list_without_names_is_refused(spec, message):
    with pytest.raises(InputError, match=message):
        tabular.parse_spec(spec)


def test_empty_option_is_off():
    assert tabular.parse_spec("") == () and tabular.parse_spec(None) == ()
    assert tabular.parse_spec(" age , sex") == ("age", "sex")


@pytest.mark.parametrize("names, message", [
    (["weight"], "weight"), (["label"], "'label' is the label column"), (["image_path"], "is the image column"),
    (["split"], "is the split column"), (["lesion_id"], "is the sample id column"), (["age", "age"], "twice")])
def test_unknown_reserved_and_repeated_columns_are_refused(names, message):
    with pytest.raises(InputError, match=message) as err:
        tabular.resolve_columns(_csv(), names, RESERVED)
    assert "--tabular-columns" in str(err.value)


def test_kinds_numbers_are_numbers_when_every_present_value_parses():
    # "" and "NA" are missing; "x" makes "code" a category although the other values are numbers
    assert tabular.resolve_columns(_csv(), ["age", "sex", "code"], RESERVED) == (
        ("age", "number"), ("sex", "category"), ("code", "category"))


def test_too_many_categories_are_refused():
    raw = _raw(image_path=[f"{k}.png" for k in range(250)], label=["a"] * 250, ident=[f"id{k}" for k in range(250)])
    with pytest.raises(InputError, match=r"'ident' has 250 distinct values.*at most 200"):
        tabular.resolve_columns(raw, ["ident"], {"image": "image_path", "label": "label"})


def test_a_column_without_any_value_is_refused():
    raw = _raw(image_path=["a.png", "b.png"], label=["x", "y"], empty=["", "NA"])
    with pytest.raises(InputError, match="'empty' has no value"):
        tabular.resolve_columns(raw, ["empty"], {"image": "image_path", "label": "label"})


def _rows(ages, sexes, splits):
    return pd.DataFrame({"tabular_age": [str(a) for a in ages], "tabular_sex": sexes, "split": splits})


def test_statistics_and_vocabulary_come_from_the_training_rows_only():
    """An outlier age and a new category only in validation/test rows must not move the record: with every
    row, the mean would be ~1700 and the vocabulary would hold 'alien'."""
    rows = _rows([20, 40, 60, "", 10000, 5000], ["male", "female", "male", "", "alien", "alien"], [0, 0, 0, 0, 1, 2])
    data = SimpleNamespace(tabular={"age": "number", "sex": "category"})
    records = model_fit.tabular_records(data, rows)
    assert records[0] == {"column": "age", "kind": "number", "mean": 40.0, "std": pytest.approx(np.std([20, 40, 60]))}
    assert records[1] == {"column": "sex", "kind": "category", "vocabulary": ["female", "male"]}
    assert model_fit.tabular_records(SimpleNamespace(tabular={}), rows) is None


def test_encoding_missing_numbers_get_the_training_mean_and_unseen_categories_the_unknown_slot():
    records = [{"column": "age", "kind": "number", "mean": 40.0, "std": 20.0},
               {"column": "sex", "kind": "category", "vocabulary": ["female", "male"]}]
    rows = _rows([60, "", "nan", 0], ["male", "", "alien", "female"], [2, 2, 2, 2])
    encoded = tabular.encode(rows, records)
    assert encoded["tabular_1"].tolist() == [1.0, 0.0, 0.0, -2.0]
    # slots: female, male, unknown
    assert encoded["tabular_2"].tolist() == ["0 1 0", "0 0 1", "0 0 1", "1 0 0"]
    with pytest.raises(InputError, match="'age' is a number for this model"):
        tabular.encode(_rows(["old"], ["male"], [2]), records)
    with pytest.raises(InputError, match="'age' has the value '1e300', more than 1e\\+06 training standard"):
        tabular.encode(_rows(["1e300"], ["male"], [2]), records)


def test_ludwig_config_has_one_input_per_column_after_the_image_and_the_concat_combiner():
    records = [{"column": "age", "kind": "number", "mean": 40.0, "std": 20.0},
               {"column": "sex", "kind": "category", "vocabulary": ["female", "male"]}]
    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=32, use_pretrained=False)
    config = ludwig_config.build_ludwig_config(options, "multiclass", tabular_records=records)
    assert [f["name"] for f in config["input_features"]] == ["image_path", "tabular_1", "tabular_2"]
    assert config["input_features"][1] == {"name": "tabular_1", "type": "number",
                                           "preprocessing": {"normalization": None}, "encoder": {"type": "passthrough"}}
    assert config["input_features"][2]["type"] == "vector"
    assert config["input_features"][2]["preprocessing"] == {"vector_size": 3}
    assert config["combiner"] == {"type": "concat"}
    assert ludwig_config.build_ludwig_config(options, "multiclass")["input_features"][1:] == []


@pytest.mark.parametrize("records, wrong", [
    ([], "a list of 1"), ([{"column": "age", "kind": "number", "mean": 1.0}], "exactly the fields"),
    ([{"column": "a", "kind": "category", "vocabulary": ["m", "f"]}], "sorted list"),
    ([{"column": "a", "kind": "number", "mean": 0.0, "std": 0.0}], "std from"),
    ([{"column": "a", "kind": "number", "mean": 0.0, "std": 1.0}] * 2, "not used before")])
def test_manifest_records_are_checked(records, wrong):
    assert wrong in tabular.check_records(records)


# --- fused train -> predict (one tiny training, shared by the tests below) ---

def _fused_csv(path) -> str:
    """The demo rows with an age (the age demo file), a sex per lesion and a site (some missing, 'unknown')."""
    table = pd.read_csv(DEMO_CSV)
    ages = pd.read_csv(AGE_CSV).set_index("image_path")["age"]
    table["age"] = ages.loc[table["image_path"]].to_numpy()
    codes = table["lesion_id"].str[-2:].astype(int)
    table["sex"] = np.where(codes % 3 == 0, "male", np.where(codes % 3 == 1, "female", "unknown"))
    table["site"] = [SITES[c % 5] if c % 7 else "" for c in codes]
    table.loc[codes % 11 == 0, "age"] = np.nan
    table.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    csv = _fused_csv(folder / "meta.csv")
    out = folder / "train"
    assert image_learner_cli.main(["--csv-file", csv, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY,
                                   "--sample-id-column", "lesion_id", "--tabular-columns", "age,sex,site"]) == 0
    return csv, out


def _manifest(out):
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        return json.loads(archive.read(f"model/{model_manifest.MANIFEST}"))


def test_fused_model_records_training_row_statistics_and_the_report_names_the_columns(fused):
    csv, out = fused
    manifest = _manifest(out)
    split = pd.read_csv(out / "split.csv")
    table = pd.read_csv(csv).set_index("image_path").loc[split["image"]]
    train = split["split"].eq("train").to_numpy()
    ages = table["age"].to_numpy(float)[train]
    ages = ages[~np.isnan(ages)]
    assert [(r["column"], r["kind"]) for r in manifest["tabular"]] == [("age", "number"), ("sex", "category"),
                                                                      ("site", "category")]
    assert manifest["tabular"][0]["mean"] == pytest.approx(ages.mean())
    assert manifest["tabular"][0]["mean"] != pytest.approx(np.nanmean(table["age"].to_numpy(float)))
    assert manifest["tabular"][1]["vocabulary"] == sorted(set(table["sex"].to_numpy()[train]))
    with zipfile.ZipFile(out / "trained_model.zip") as archive:
        card = archive.read("model/MODEL_CARD.md").decode()
    line = next(line for line in card.splitlines() if line.startswith("- Model inputs: "))
    assert all(name in line for name in ("age", "sex", "site")) and line.endswith("predict needs these columns in its CSV")
    html = (out / "report.html").read_text()
    assert "model inputs" in html and "age (number, z-scored with the training rows" in html
    assert "Grad-CAM failed" not in html and 'alt="saliency of' in html


def test_fused_predict_reproduces_the_training_predictions(fused, tmp_path):
    csv, out = fused
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", csv, "--output-dir", str(tmp_path / "p")]) == 0
    before = pd.read_csv(out / "predictions.csv")
    after = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image").loc[before["image"]]
    probs = [c for c in before if c.startswith("prob_")]
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)
    assert not any(c.startswith("tabular_") for c in after)


def test_the_tabular_values_change_the_prediction(fused, tmp_path):
    """The features reach the model: other ages and sites give other probabilities for the same images."""
    csv, out = fused
    changed = pd.read_csv(csv).assign(age=5, site="face", sex="male")
    changed.to_csv(tmp_path / "changed.csv", index=False)
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", str(tmp_path / "changed.csv"), "--output-dir",
                                   str(tmp_path / "p"), "--no-evaluate"]) == 0
    before = pd.read_csv(out / "predictions.csv")
    after = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image").loc[before["image"]]
    probs = [c for c in before if c.startswith("prob_")]
    assert np.abs(after[probs].to_numpy() - before[probs].to_numpy()).max() > 1e-4


def _predict_subprocess(args, tmp_path):
    return subprocess.run([sys.executable, CLI, "predict", *args, "--output-dir", str(tmp_path / "p")],
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})


def test_predict_refuses_a_csv_without_a_models_column(fused, tmp_path):
    csv, out = fused
    pd.read_csv(csv).drop(columns=["sex"]).to_csv(tmp_path / "nosex.csv", index=False)
    done = _predict_subprocess(["--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                "--csv-file", str(tmp_path / "nosex.csv")], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "no column 'sex'" in done.stderr and "Traceback" not in done.stderr


def test_predict_without_a_csv_names_the_columns(fused, tmp_path):
    _, out = fused
    from image_learner.model import predictor

    with pytest.raises(InputError, match="tabular columns age, sex, site beside the image: pass --csv-file"):
        predictor.predict(predictor.PredictRequest(str(out / "trained_model.zip"), DEMO_ZIP, str(tmp_path / "p")))


def _tampered(out, tmp_path, change) -> str:
    source = out / "trained_model.zip"
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    manifest = json.loads(members[f"model/{model_manifest.MANIFEST}"])
    change(manifest)
    members[f"model/{model_manifest.MANIFEST}"] = json.dumps(manifest).encode()
    return make_zip(tmp_path / "tampered.zip", members)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["tabular"].pop(), "input_features has 4 entries, expected 3"),
    (lambda m: m.pop("tabular"), "input_features has 4 entries, expected 1"),
    (lambda m: m["tabular"][1]["vocabulary"].append("zzz"), r"input_features\[2\]"),
    (lambda m: m["tabular"][0].update(kind="category", vocabulary=["a"]), "exactly the fields"),
])
def test_a_tampered_column_list_is_refused(fused, tmp_path, change, message):
    _, out = fused
    model = _tampered(out, tmp_path, change)
    with pytest.raises(InputError, match=message):
        model_archive.validate_json_files(_unpacked(model, tmp_path), _tool_version(), _ludwig_version(),
                                          _render())


def _unpacked(model, tmp_path):
    with zipfile.ZipFile(model) as archive:
        archive.extractall(tmp_path / "unpacked")
    return str(tmp_path / "unpacked" / "model")


def _tool_version():
    from image_learner.run_files import TOOL_VERSION

    return TOOL_VERSION


def _ludwig_version():
    from importlib.metadata import version

    return version("ludwig")


def _render():
    from image_learner.training import ludwig_trainer

    return ludwig_trainer.rendered_config


def test_the_untampered_fused_model_passes_the_checks(fused, tmp_path):
    _, out = fused
    manifest, config = model_archive.validate_json_files(_unpacked(out / "trained_model.zip", tmp_path),
                                                         _tool_version(), _ludwig_version(), _render())
    assert [f["name"] for f in config["input_features"]] == ["image_path", "tabular_1", "tabular_2", "tabular_3"]


def test_the_cli_refuses_a_reserved_column_before_unpacking(tmp_path):
    done = subprocess.run([sys.executable, CLI, "--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                           str(tmp_path / "o"), *TINY, "--tabular-columns", "lesion_id,label"],
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 2
    assert "--tabular-columns: 'label' is the label column" in done.stderr


def test_onnx_export_of_a_fused_model_is_refused_before_training(tmp_path, capsys):
    assert image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                                   str(tmp_path / "o"), *TINY, "--tabular-columns", "lesion_id",
                                   "--export-onnx"]) == 2
    assert "--export-onnx takes the image alone" in capsys.readouterr().err


def test_each_cross_validation_fold_and_the_final_model_compute_their_own_statistics():
    """Fold 2's model never sees fold 2's ages (nor the validation part carved from its training folds), the
    final model sees every fold row, and no model sees the held-out test rows (split 2)."""
    from image_learner.training import cross_validation

    n = 40
    fold = np.tile([1, 2], n // 2)
    ages = np.where(fold == 1, 20.0, 80.0)
    split = np.zeros(n, dtype=int)
    split[-4:], fold[-4:], ages[-4:] = 2, 0, 5000.0  # held-out test rows with an outlier age
    table = pd.DataFrame({"tabular_age": [str(a) for a in ages], "fold": fold, "split": split,
                          "stratum": "x", "group": [f"g{k}" for k in range(n)], "label": "x"})
    data = SimpleNamespace(table=table, tabular={"age": "number"})
    for k, expected in ((1, 80.0), (2, 20.0)):
        rows = cross_validation.fold_rows(data, k, (0.7, 0.1, 0.2), 42)
        assert model_fit.tabular_records(data, rows)[0]["mean"] == expected
    final_rows = table[table["split"] == 0]
    assert model_fit.tabular_records(data, final_rows)[0]["mean"] == pytest.approx(50.0)


def test_fused_predict_with_test_time_augmentation_carries_the_tabular_inputs_to_every_view(fused, tmp_path):
    csv, out = fused
    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--csv-file", csv, "--output-dir", str(tmp_path / "p"), "--tta", "flips"]) == 0
    after = pd.read_csv(tmp_path / "p" / "predictions.csv")
    probs = after[[c for c in after if c.startswith("prob_")]].to_numpy()
    assert len(after) == 140 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
