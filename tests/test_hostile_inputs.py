"""Broken and hostile inputs end in a clear error naming the file/row/column, or a documented repair."""

import os
import unicodedata
import zipfile

import pandas as pd
import pytest

from image_learner.data import dataset_prep
import image_learner_cli
from conftest import DEMO_CSV, make_zip, png_bytes
from image_learner.data.input_utils import InputError, extract_zip_safely


def _prepare(tmp_path, rows, files=None, **options):
    """Write images (distinct random textures) and a CSV, then run the data stage (no training)."""
    root = tmp_path / "images"
    root.mkdir(parents=True, exist_ok=True)
    names = files if files is not None else sorted({r["image_path"] for r in rows})
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(i))
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    return dataset_prep.prepare(str(tmp_path / "meta.csv"), str(root), names, dataset_prep.DataOptions(**options),
                                converted_dir=str(tmp_path / "conv"))


def _rows(n, labels="ab"):
    return [{"image_path": f"img{i}.png", "label": labels[i % len(labels)]} for i in range(n)]


def test_encrypted_members_are_refused(tmp_path):
    path = tmp_path / "enc.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("secret.png", png_bytes(0))
    # Set the "encrypted" bit of the general-purpose flags, as `zip -e` does, in the local header
    # (offset 6) and the central directory entry (offset 8); zipfile cannot write encrypted members.
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 0x1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="'secret.png' is encrypted"):
        extract_zip_safely(str(path), str(tmp_path / "out"))


def test_empty_zip_and_zip_without_images_say_so(tmp_path):
    with pytest.raises(InputError, match="holds no image files .*; it is empty"):
        _prepare(tmp_path, _rows(4), files=[])
    empty = make_zip(tmp_path / "empty.zip", {})
    assert extract_zip_safely(empty, str(tmp_path / "out")) == []


def test_non_ascii_names_match_across_unicode_normal_forms(tmp_path):
    composed = "lésion_ü.png"
    decomposed = unicodedata.normalize("NFD", composed)  # how macOS writes it into a ZIP
    rows = [{"image_path": composed, "label": "a"}] + _rows(9)
    data = _prepare(tmp_path, rows, files=[decomposed] + [r["image_path"] for r in _rows(9)])
    assert data.table["image_file"].iloc[0] == decomposed
    assert len(data.table) == 10


def test_repeated_rows_are_dropped_and_conflicting_labels_refused(tmp_path):
    rows = _rows(10) + [{"image_path": "img0.png", "label": "a"}]
    data = _prepare(tmp_path, rows)
    assert len(data.table) == 10
    assert any("1 repeated CSV row(s)" in w and "CSV lines 12" in w for w in data.warnings)
    rows[-1]["label"] = "b"
    with pytest.raises(InputError, match=r"'img0.png' is listed on CSV lines 2, 12 with different labels \(a, b\)"):
        _prepare(tmp_path / "x", rows)


def test_missing_images_above_the_threshold_stop_the_run(tmp_path):
    rows = _rows(20)
    files = [r["image_path"] for r in rows[:17]]  # 3 of 20 rows (15%) have no image
    with pytest.raises(InputError, match=r"3 of 20 CSV rows have no image in the ZIP \(CSV lines 19, 20, 21"):
        _prepare(tmp_path, rows, files=files)
    data = _prepare(tmp_path / "ok", rows, files=files, max_missing_fraction=0.2)
    assert len(data.table) == 17 and data.dataset["unmatched_rows"] == 3


@pytest.mark.parametrize("labels, message", [
    (["a", "", "b", "a"], r"empty on CSV line\(s\) 3"),
    (["a", "b", "  ", "a", "b", ""], r"empty on CSV line\(s\) 4, 7"),
    (["a", "a", "a", "a"], "only one class"),
])
def test_bad_labels_name_the_lines(tmp_path, labels, message):
    rows = [{"image_path": f"img{i}.png", "label": lab} for i, lab in enumerate(labels)]
    with pytest.raises(InputError, match=message):
        _prepare(tmp_path, rows)


def test_numeric_labels_are_class_names(tmp_path):
    rows = [{"image_path": f"img{i}.png", "label": ["0", "1", "01"][min(i % 10, 2)]} for i in range(21)]
    data = _prepare(tmp_path, rows)
    assert data.classes == ["0", "01", "1"]  # text: "01" is not "1"
    assert data.task == "multiclass"
    # "1" (2 images) lands in train and test, none in validation: said, not hidden
    assert any("'1' (2 image(s) in 2 group(s): train 1, validation 0, test 1) have no validation rows" in w
               for w in data.warnings)


def _rare_class_rows():
    rows = [{"image_path": f"img{i}.png", "label": "ab"[i % 2], "split": ["train", "test"][i % 5 == 0]}
            for i in range(20)]
    return rows + [{"image_path": "img20.png", "label": "7", "split": "train"}]  # a class with a single image


def test_a_class_too_rare_for_train_and_test_stops_a_random_split(tmp_path):
    with pytest.raises(InputError, match=r"class\(es\) without training or test images: '7' \(1 image\(s\) in 1 "
                                         r"group\(s\): train 1, validation 0, test 0\).*remove the rows of a rare"):
        _prepare(tmp_path, _rare_class_rows(), random_split=True)


def test_a_class_missing_from_the_users_test_split_is_a_warning(tmp_path):
    data = _prepare(tmp_path, _rare_class_rows())  # the CSV's "split" column: the user's choice
    assert data.split["column"] == "split"
    assert any("'7' (1 image(s) in 1 group(s): train 1, validation 0, test 0) have no test rows" in w
               for w in data.warnings)


def test_two_patients_per_class_cannot_fill_three_splits(tmp_path):
    """Before: every tie went to train, so this gave train 40 / validation 0 / test 0 with exit 0."""
    rows = [{"image_path": f"img{i}.png", "label": "abcd"[i // 10], "patient": f"p{i // 5}"} for i in range(40)]
    with pytest.raises(InputError, match=r"the validation split is empty \(train 20, validation 0, test 20 "
                                         r"images\).*8 group\(s\) for 40 images.*--split-probabilities"):
        _prepare(tmp_path, rows, sample_id_column="patient")
    # a 0 validation share asks for no validation split: then the same data is fine
    data = _prepare(tmp_path / "no_val", rows, sample_id_column="patient", split_probabilities=(0.5, 0.0, 0.5))
    counts = {k: sum(v.values()) for k, v in data.dataset["class_counts"].items()}
    assert counts == {"train": 20, "validation": 0, "test": 20}


def test_bad_split_value_names_its_csv_line_when_earlier_rows_have_no_image(tmp_path):
    rows = [{"image_path": f"img{i}.png", "label": "ab"[i % 2], "split": "train"} for i in range(30)]
    rows[25]["split"] = "holdout"  # CSV line 27
    files = [r["image_path"] for r in rows[2:]]  # the first two rows (lines 2, 3) have no image
    with pytest.raises(InputError, match=r"split column 'split', CSV line 27: 'holdout'"):
        _prepare(tmp_path, rows, files=files)


def test_paths_with_dot_slash_and_backslashes_match(tmp_path):
    rows = [{"image_path": (".\\sub\\" if i % 2 else "./sub/") + f"img{i}.png", "label": "ab"[i % 2]}
            for i in range(10)]
    data = _prepare(tmp_path, rows, files=[f"sub/img{i}.png" for i in range(10)])
    assert data.table["image_file"].tolist() == [f"sub/img{i}.png" for i in range(10)]


def test_hostile_archive_never_writes_outside(tmp_path):
    outside_before = set(os.listdir(tmp_path))
    archive = make_zip(tmp_path / "evil.zip", {"ok.png": png_bytes(1), "../../escaped.png": png_bytes(2)})
    with pytest.raises(InputError):
        extract_zip_safely(archive, str(tmp_path / "job" / "out"))
    assert set(os.listdir(tmp_path)) - outside_before == {"evil.zip"}  # every member is checked before writing
    assert not os.path.exists(tmp_path.parent / "escaped.png")


def test_a_split_column_is_used_by_name_unless_a_random_split_is_asked_for(tmp_path):
    rows = [{"image_path": f"img{i}.png", "label": "ab"[i % 2], "Split": ["train", "test"][i % 5 == 0]}
            for i in range(40)]
    auto = _prepare(tmp_path / "auto", rows)
    assert auto.split["column"] == "Split"
    assert auto.split["method"].startswith("user column 'Split' (used because of its name; --random-split ignores it)")
    random = _prepare(tmp_path / "random", rows, random_split=True)
    assert random.split["column"] is None
    assert random.split["method"] == "random, stratified by label, seeded (column 'Split' ignored: --random-split)"
    chosen = _prepare(tmp_path / "chosen", rows, split_column="3")
    assert chosen.split["method"].startswith("user column 'Split', validation carved")
    with pytest.raises(InputError, match="--random-split and --split-column contradict each other"):
        _prepare(tmp_path / "both", rows, random_split=True, split_column="Split")


def test_a_zip_with_a_file_and_a_folder_of_one_name_exits_2_naming_both(tmp_path, capsys):
    images = make_zip(tmp_path / "images.zip", {"images/a": b"not an image", "images/a/b.png": png_bytes(1)})
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", images, "--output-dir", str(tmp_path / "out"),
                                   "--model-name", "test_efficientnet", "--image-size", "32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'images/a' and 'images/a/b.png' conflict" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "out") == []


def test_non_image_members_are_counted_for_the_summary(tmp_path):
    rows = _rows(10)
    root = tmp_path / "images"
    data = _prepare(tmp_path, rows)
    assert data.dataset["non_image_files_skipped"] == 0
    data = dataset_prep.prepare(str(tmp_path / "meta.csv"), str(root), [r["image_path"] for r in rows],
                                dataset_prep.DataOptions(), converted_dir=str(tmp_path / "conv2"),
                                skipped_files=["notes.txt", "a/readme.md"])
    assert data.dataset["non_image_files_skipped"] == 2
    with pytest.raises(InputError, match="holds no image files .*; it has 2 other files such as a/readme.md, notes"):
        dataset_prep.prepare(str(tmp_path / "meta.csv"), str(root), [], dataset_prep.DataOptions(),
                             skipped_files=["notes.txt", "a/readme.md"])
