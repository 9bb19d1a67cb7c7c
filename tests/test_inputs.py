"""Inputs: safe unpacking, CSV reading, column resolution and row-to-image matching."""

import os
import stat
import zipfile

import pandas as pd
import pytest

from conftest import make_zip, png_bytes
from image_learner.data.input_utils import (InputError, ZipLimits, extract_images, extract_zip_safely, match_rows_to_images,
                         read_metadata_csv, resolve_column)


def test_extracts_nested_folders_and_skips_os_junk(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {
        "imgs/a/1.png": png_bytes(1), "imgs/b/2.png": png_bytes(2),
        "__MACOSX/imgs/._1.png": b"junk", "imgs/.DS_Store": b"junk", "imgs/a/._1.png": b"junk",
    })
    files = extract_zip_safely(archive, str(tmp_path / "out"))
    assert sorted(files) == ["imgs/a/1.png", "imgs/b/2.png"]
    assert not (tmp_path / "out" / "__MACOSX").exists()


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/evil.png", "..\\evil.png"])
def test_refuses_paths_leaving_the_archive(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {name: b"x"})
    with pytest.raises(InputError, match="refusing the archive"):
        extract_zip_safely(archive, str(tmp_path / "out"))
    assert not (tmp_path / "evil.png").exists()


def _zip_with_link(path, link_name: str, members: dict | None = None) -> str:
    """A ZIP holding ``members`` and a symbolic link ``link_name`` -> /etc/passwd."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in (members or {}).items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo(link_name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return str(path)


def test_refuses_symlink_members(tmp_path):
    path = _zip_with_link(tmp_path / "link.zip", "images/link.png")
    with pytest.raises(InputError, match="link"):
        extract_zip_safely(path, str(tmp_path / "out"))


def test_refuses_a_decompression_bomb(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.png", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(InputError, match="decompression bomb"):
        extract_zip_safely(str(archive), str(tmp_path / "out"), ZipLimits(max_ratio=100))
    with pytest.raises(InputError, match="beyond the limit"):
        extract_zip_safely(str(archive), str(tmp_path / "out2"), ZipLimits(max_total_bytes=1024, max_ratio=1e9))


def test_refuses_too_many_members(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(5)})
    with pytest.raises(InputError, match="has 5 members, more than the limit of 4"):
        extract_zip_safely(archive, str(tmp_path / "out"), ZipLimits(max_members=4))


def test_refuses_a_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "images.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a ZIP archive"):
        extract_zip_safely(str(path), str(tmp_path / "out"))


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_reads_csv_tsv_semicolon_with_bom_and_crlf(tmp_path, sep):
    path = tmp_path / "meta.csv"
    text = sep.join(["image_path", "label"]) + "\r\n" + sep.join(["a.png", "007"]) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = read_metadata_csv(str(path))
    assert list(table.columns) == ["image_path", "label"]
    assert table.loc[0, "label"] == "007"  # labels keep their spelling: text, not numbers


def test_column_by_name_case_or_index_and_helpful_error():
    table = pd.DataFrame(columns=["File", "Diagnosis", "lesion"])
    assert resolve_column(table, "Diagnosis", "label", "--target-column") == "Diagnosis"
    assert resolve_column(table, "diagnosis", "label", "--target-column") == "Diagnosis"
    assert resolve_column(table, "3", "label", "--target-column") == "lesion"
    with pytest.raises(InputError, match=r"'label' \(--target-column\) is not in the CSV; its columns are: 'File', "
                                         r"'Diagnosis', 'lesion'"):
        resolve_column(table, "label", "label", "--target-column")


def test_matching_by_path_wrapped_folder_basename_and_windows_spelling():
    files = ["data/images/a.png", "data/images/b.png", "data/other/c.png", "data/notes.txt"]
    table = pd.DataFrame({"image_path": ["images/a.png", ".\\data\\images\\b.png", "c.png", "missing.png"],
                          "label": ["x", "y", "x", "y"]})
    result = match_rows_to_images(table, "image_path", files)
    assert result.table["image_file"].tolist() == ["data/images/a.png", "data/images/b.png", "data/other/c.png"]
    assert result.unmatched_rows == [5]  # CSV line of missing.png (header is line 1)
    assert result.unused_images == [] and result.n_images == 3


def test_ambiguous_basename_names_both_files():
    files = ["train/img1.png", "test/img1.png"]
    table = pd.DataFrame({"image_path": ["img1.png"], "label": ["x"]})
    with pytest.raises(InputError, match=r"line 2: .*test/img1.png, train/img1.png"):
        match_rows_to_images(table, "image_path", files)


def test_extracted_files_stay_inside_the_destination(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x/1.png": png_bytes(1)})
    before = set(os.listdir(tmp_path))
    extract_zip_safely(archive, str(tmp_path / "out"))
    assert set(os.listdir(tmp_path)) - before == {"out"}


def test_the_image_zip_yields_only_images_and_counts_the_rest(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {
        "imgs/1.png": png_bytes(1), "imgs/2.JPG": png_bytes(2), "imgs/notes.txt": b"text",
        "run.sh": b"#!/bin/sh", "imgs/model.pkl": b"cos", "__MACOSX/imgs/._1.png": b"junk",
    })
    unpacked = extract_images(archive, str(tmp_path / "out"))
    assert sorted(unpacked.files) == ["imgs/1.png", "imgs/2.JPG"]
    assert sorted(unpacked.skipped) == ["imgs/model.pkl", "imgs/notes.txt", "run.sh"]
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "out")
                     for d, _, files in os.walk(tmp_path / "out") for f in files)
    assert written == ["imgs/1.png", "imgs/2.JPG"]


def test_skipped_members_are_still_checked(tmp_path):
    path = _zip_with_link(tmp_path / "link.zip", "notes", {"ok.png": png_bytes(1)})
    with pytest.raises(InputError, match="'notes' is a link"):
        extract_images(path, str(tmp_path / "out"))


def test_keep_selects_the_members_to_extract(tmp_path):
    archive = make_zip(tmp_path / "m.zip", {"model/a.json": b"{}", "model/b.bin": b"x", "other.txt": b"y"})
    assert extract_zip_safely(archive, str(tmp_path / "out"), keep={"model/a.json"}) == ["model/a.json"]
    assert os.listdir(tmp_path / "out" / "model") == ["a.json"]
    assert extract_zip_safely(archive, str(tmp_path / "out2"), keep=lambda m: m.endswith(".bin")) == ["model/b.bin"]


@pytest.mark.parametrize("members", [["a", "a/b.png"], ["a/b.png", "a"], ["a/", "a"], ["a", "a/"],
                                     ["x/a.png", "x/a.png/b.png"], ["a/b/c.png", "a/b"]])
def test_a_path_that_is_both_a_file_and_a_folder_is_refused_naming_both(tmp_path, members):
    archive = make_zip(tmp_path / "c.zip", {name: (b"" if name.endswith("/") else png_bytes(1)) for name in members})
    for extract in (extract_zip_safely, extract_images):
        with pytest.raises(InputError) as refused:
            extract(archive, str(tmp_path / "out"))
        assert all(repr(name) in str(refused.value) for name in members), str(refused.value)
        assert "both a file and a folder" in str(refused.value)
        assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_member_twice_names_both_spellings(tmp_path):
    archive = make_zip(tmp_path / "d.zip", {"a/b.png": png_bytes(1), "./a/b.png": png_bytes(2)})
    with pytest.raises(InputError, match=r"'a/b.png' appears twice in the archive \(as 'a/b.png' and './a/b.png'\)"):
        extract_images(archive, str(tmp_path / "out"))
