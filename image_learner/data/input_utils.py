"""Inputs: unpack the images ZIP safely, read the metadata CSV, and match its rows to image files.

Everything here is pure file/data handling (no Ludwig, no torch) so tests can call it directly.
User mistakes raise :class:`InputError` with a message that names the file, row or column.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import unicodedata
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pandas as pd

from image_learner.errors import MAX_LISTED, InputError, listed  # noqa: F401 (re-exported)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# Archive members that operating systems add by themselves; never images, never an error.
JUNK_PARTS = ("__MACOSX",)
JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")

DEFAULT_MAX_TOTAL_BYTES = 20 * 1024**3  # 20 GiB uncompressed
DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_RATIO = 200  # compressed:uncompressed; JPEG/PNG barely compress, bombs reach 1000+

# Spellings spreadsheets and pandas use for "no value" (compared lower-case). A label is kept exactly as
# written, so these are legal class names; a class spelled like one only earns a warning.
MISSING_VALUE_MARKERS = frozenset({
    "n/a", "na", "#n/a", "#n/a n/a", "#na", "<na>", "nan", "-nan", "none", "null", "#null!", "nil", "missing",
    "-", "--", "?", "1.#ind", "-1.#ind", "1.#qnan", "-1.#qnan",
})
# Text columns of the tables this tool writes (predictions.csv, split.csv), re-read as text, never as NA.
OUTPUT_TEXT_COLUMNS = ("image", "image_file", "split", "label", "true_label", "predicted_label", "sample_id")


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS
    max_ratio: float = DEFAULT_MAX_RATIO
    max_member_bytes: int | None = None  # each extracted member, as claimed and as written (None: only the total)
    kind: str = "image ZIP"  # how messages name the archive
    hint: str = "; raise --max-unzipped-bytes if this is intended"  # how to raise max_total_bytes


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1]
    return any(p in JUNK_PARTS for p in parts) or base in JUNK_NAMES or base.startswith("._")


def _safe_member_path(name: str) -> str:
    """Return the member's path relative to the extraction root, or raise for a hostile name."""
    if "\x00" in name:
        raise InputError(f"ZIP member {name!r} has a NUL byte in its name; refusing the archive")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InputError(f"ZIP member {name!r} has an absolute path; refusing the archive")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InputError(f"ZIP member {name!r} points outside the archive ('..'); refusing the archive")
    return "/".join(parts)


@dataclass
class UnpackedZip:
    files: list[str]  # extracted, relative to the destination
    skipped: list[str]  # regular members left in the archive (not selected)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def extract_images(zip_path: str, dest_dir: str, limits: ZipLimits = ZipLimits()) -> UnpackedZip:
    """The images ZIP: only image files are written; other members are checked like every member, then
    left in the archive and listed in ``skipped``."""
    return _unpack(zip_path, dest_dir, limits, is_image_name)


def extract_zip_safely(zip_path: str, dest_dir: str, limits: ZipLimits = ZipLimits(),
                       keep: Callable[[str], bool] | Collection[str] | None = None) -> list[str]:
    """Extract the regular files of ``zip_path`` into ``dest_dir``; with ``keep`` (a predicate on, or a
    collection of, member paths) only those.

    Refuses path traversal, absolute paths, links, encrypted members, a path that is both a file and a
    folder, and archives over ``limits`` (checked on the bytes actually written, not on the sizes the
    archive claims). OS junk (``__MACOSX/``, ``.DS_Store``) is skipped. Returns the extracted paths
    relative to ``dest_dir``.
    """
    return _unpack(zip_path, dest_dir, limits, keep).files


def zip_member_sizes(zip_path: str, limits: ZipLimits = ZipLimits()) -> dict[str, int]:
    """The regular members' paths and the sizes the archive claims for them, checked like every member
    of an extraction (names, links, count); nothing is written or decompressed."""
    with _open_zip(zip_path, limits) as archive:
        return {rel: info.file_size for rel, info in _checked_members(archive.infolist())}


def _open_zip(zip_path: str, limits: ZipLimits) -> zipfile.ZipFile:
    if not os.path.isfile(zip_path):
        raise InputError(f"{limits.kind} {zip_path!r} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise InputError(f"{limits.kind} {os.path.basename(zip_path)!r} is not a ZIP archive")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{limits.kind} {os.path.basename(zip_path)!r} cannot be read: {err}") from err
    if len(archive.infolist()) > limits.max_members:
        archive.close()
        raise InputError(f"{limits.kind} has {len(archive.infolist())} members, more than the limit of "
                         f"{limits.max_members}")
    return archive


def _unpack(zip_path: str, dest_dir: str, limits: ZipLimits, keep) -> UnpackedZip:
    if keep is not None and not callable(keep):
        keep = set(keep).__contains__
    with _open_zip(zip_path, limits) as archive:
        regular = _checked_members(archive.infolist())  # every member, extracted or not: nothing written yet
        if limits.max_member_bytes is not None:  # the sizes claimed, before anything is written
            for rel, info in regular:
                if (keep is None or keep(rel)) and info.file_size > limits.max_member_bytes:
                    raise _member_too_large(info.filename, limits)
        unpacked = UnpackedZip(files=[], skipped=[])
        os.makedirs(dest_dir, exist_ok=True)
        total = 0
        for rel, info in regular:
            if keep is not None and not keep(rel):
                unpacked.skipped.append(rel)
                continue
            target = os.path.join(dest_dir, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            total += _copy_member(archive, info, target, limits, total)
            unpacked.files.append(rel)
    return unpacked


def _checked_members(members: list[zipfile.ZipInfo]) -> list[tuple[str, zipfile.ZipInfo]]:
    """The regular files as (relative path, member); raises for a hostile or contradictory member."""
    files: dict[str, str] = {}  # relative path -> member name
    folders: dict[str, str] = {}  # relative folder -> a member that needs it
    regular = []
    for info in members:
        rel = _safe_member_path(info.filename)
        if not rel or _is_junk(rel):
            continue
        if not info.is_dir():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode)):
                raise InputError(f"ZIP member {info.filename!r} is a link or special file; refusing the archive")
            if info.flag_bits & 0x1:
                raise InputError(f"ZIP member {info.filename!r} is encrypted; upload an unencrypted ZIP")
            if rel in files:
                raise InputError(f"ZIP member {rel!r} appears twice in the archive (as {files[rel]!r} and "
                                 f"{info.filename!r}); refusing the archive")
        # A path cannot be a file and a folder at once: ``a`` and ``a/b.png``, in either order.
        parts = rel.split("/")
        needed = ["/".join(parts[:k]) for k in range(1, len(parts))] + ([rel] if info.is_dir() else [])
        for folder in needed:
            if folder in files:
                raise _file_and_folder(folder, files[folder], info.filename)
            folders.setdefault(folder, info.filename)
        if not info.is_dir():
            if rel in folders:
                raise _file_and_folder(rel, info.filename, folders[rel])
            files[rel] = info.filename
            regular.append((rel, info))
    return regular


def _file_and_folder(path: str, file_member: str, folder_member: str) -> InputError:
    return InputError(f"ZIP members {file_member!r} and {folder_member!r} conflict: {path!r} would be both a file "
                      "and a folder; refusing the archive")


def _member_too_large(name: str, limits: ZipLimits) -> InputError:
    return InputError(f"ZIP member {name!r} is larger than the limit of {limits.max_member_bytes} bytes for it "
                      f"({limits.kind}); refusing the archive")


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: str, limits: ZipLimits,
                 total_before: int) -> int:
    written = 0
    allowed_by_ratio = max(info.compress_size, 1) * limits.max_ratio + 1024 * 1024
    try:
        with archive.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1024 * 1024):
                written += len(chunk)
                if total_before + written > limits.max_total_bytes:
                    raise InputError(
                        f"{limits.kind} expands beyond the limit of {limits.max_total_bytes} bytes "
                        f"(at member {info.filename!r}){limits.hint}"
                    )
                if limits.max_member_bytes is not None and written > limits.max_member_bytes:
                    raise _member_too_large(info.filename, limits)
                if written > allowed_by_ratio:
                    raise InputError(
                        f"ZIP member {info.filename!r} expands more than {limits.max_ratio:g}x its compressed "
                        "size: refusing a likely decompression bomb"
                    )
                dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as err:
        raise InputError(f"ZIP member {info.filename!r} cannot be extracted: {err}") from err
    return written


# --------------------------------------------------------------------------------------------- CSV

def read_metadata_csv(csv_path: str) -> pd.DataFrame:
    """Read the metadata table (comma, tab or semicolon separated; UTF-8 with or without BOM).

    Every column is read as text so labels such as ``01`` or ``1.0`` keep their spelling.
    """
    if not os.path.isfile(csv_path):
        raise InputError(f"metadata CSV {csv_path!r} does not exist")
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            header = handle.readline()
    except UnicodeDecodeError as err:
        raise InputError(f"metadata CSV {os.path.basename(csv_path)!r} is not UTF-8 text: {err}") from err
    if not header.strip():
        raise InputError(f"metadata CSV {os.path.basename(csv_path)!r} is empty")
    sep = max(("\t", ",", ";"), key=header.count)
    try:
        table = pd.read_csv(csv_path, sep=sep, dtype=str, encoding="utf-8-sig", keep_default_na=False,
                            skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"metadata CSV {os.path.basename(csv_path)!r} cannot be parsed: {err}") from err
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise InputError(f"metadata CSV {os.path.basename(csv_path)!r} has a header but no rows")
    return table


def label_text(values: pd.Series, column: str, csv_lines=None) -> pd.Series:
    """The one rule for label text: every value is kept as written (stripped), ``N/A`` or ``null``
    included; only an empty cell is a missing label, an error naming its CSV lines."""
    labels = pd.Series(values).astype(str).str.strip().reset_index(drop=True)
    lines = pd.Series(range(2, len(labels) + 2) if csv_lines is None else list(csv_lines))
    empty = lines[(labels == "").to_numpy()].tolist()
    if empty:
        raise InputError(f"label column {column!r} is empty on CSV line(s) {listed(empty)}; "
                         "label every row or remove the unlabelled ones")
    return labels


def missing_value_like(names) -> list[str]:
    """The names that read like a spreadsheet's "no value" marker (``N/A``, ``NaN``, ``None``, ``-`` …)."""
    return [n for n in names if str(n).strip().lower() in MISSING_VALUE_MARKERS]


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): one starting with = + - @, tab or CR,
# unless it is a plain number (a class "-1" is harmless and stays as written).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value):
    """A text cell that a spreadsheet would run as a formula gets a leading ``'`` (shown as text); so does
    one already starting with ``'``, so that ``read_output_csv`` can drop exactly one and get the value back."""
    if isinstance(value, str) and (value.startswith("'") or value.startswith(FORMULA_START)
                                   and not _PLAIN_NUMBER.fullmatch(value)):
        return "'" + value
    return value


def write_output_csv(table: pd.DataFrame, path: str, text_columns=OUTPUT_TEXT_COLUMNS) -> None:
    """Write a table of this tool (predictions.csv) with its text columns made spreadsheet-safe; numeric
    columns are written as numbers (a negative regression value stays a number)."""
    table = table.copy()
    for column in table.columns.intersection(list(text_columns)):
        table[column] = table[column].astype(object).map(spreadsheet_safe)
    table.to_csv(path, index=False)


def read_output_csv(path: str, text_columns=OUTPUT_TEXT_COLUMNS) -> pd.DataFrame:
    """Re-read a table this tool wrote: text columns as text exactly as written (a class ``N/A`` or
    ``None`` stays that string, ``01`` stays ``01``; the ``'`` of ``write_output_csv`` removed); only an
    empty numeric cell is NaN."""
    header = pd.read_csv(path, nrows=0).columns
    text = [c for c in header if c in text_columns]
    table = pd.read_csv(path, dtype=dict.fromkeys(text, str), keep_default_na=False,
                        na_values={c: [""] for c in header if c not in text})
    for column in text:
        table[column] = table[column].map(lambda v: v[1:] if v.startswith("'") else v)
    return table


def resolve_column(table: pd.DataFrame, wanted: str | int | None, role: str, option: str) -> str:
    """Find a column by name or by 1-based index (``"2"``); the error lists the columns there are."""
    columns = list(table.columns)
    text = str(wanted).strip()
    if text in columns:
        return text
    lowered = {c.lower(): c for c in columns}
    if text.lower() in lowered:
        return lowered[text.lower()]
    if text.isdigit() and 1 <= int(text) <= len(columns):
        return columns[int(text) - 1]
    raise InputError(
        f"{role} column {text!r} ({option}) is not in the CSV; its columns are: "
        + ", ".join(repr(c) for c in columns)
    )


# -------------------------------------------------------------------------------------- matching

def normalise_csv_path(value: str) -> str:
    """``./a\\b.png`` → ``a/b.png``: the spellings Excel and Windows users write. Unicode is put in NFC
    form, because macOS writes accented names into ZIPs decomposed (NFD) while CSVs hold them composed."""
    parts = [p for p in unicodedata.normalize("NFC", value.strip()).replace("\\", "/").split("/")
             if p not in ("", ".")]
    return "/".join(parts)


@dataclass
class MatchResult:
    """Which CSV rows found their image, and what was left over on either side."""

    table: pd.DataFrame  # matched rows only, plus ``image_file`` (path in the ZIP) and ``csv_line``
    unmatched_rows: list[int] = field(default_factory=list)  # 1-based CSV line numbers (header = 1)
    unused_images: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_images: int = 0


def match_rows_to_images(table: pd.DataFrame, image_column: str, image_files: list[str]) -> MatchResult:
    """Match each row's path to an extracted image: exact relative path, then a unique path suffix
    (the ZIP wrapped everything in one folder), then a unique basename.

    An ambiguous basename is an error naming the candidates. Rows are kept in CSV order.
    """
    images = sorted(f for f in image_files if f.lower().endswith(IMAGE_EXTENSIONS))
    exact = {unicodedata.normalize("NFC", p): p for p in images}
    by_base: dict[str, list[str]] = {}
    for path in images:
        by_base.setdefault(unicodedata.normalize("NFC", posixpath.basename(path)), []).append(path)

    resolved: list[str | None] = []
    for row_number, raw in zip(range(2, len(table) + 2), table[image_column]):
        wanted = normalise_csv_path(raw)
        hit = exact.get(wanted)
        if hit is None and wanted:
            suffix = [p for p in by_base.get(posixpath.basename(wanted), [])
                      if unicodedata.normalize("NFC", p).endswith("/" + wanted)]
            candidates = suffix or by_base.get(posixpath.basename(wanted), [])
            if len(candidates) > 1:
                raise InputError(
                    f"CSV line {row_number}: image {raw!r} matches several files in the ZIP "
                    f"({', '.join(candidates[:5])}); write its path relative to the ZIP root"
                )
            hit = candidates[0] if candidates else None
        resolved.append(hit)

    matched = table.copy()
    matched["csv_line"] = range(2, len(table) + 2)
    matched["image_file"] = resolved
    unmatched_rows = [i + 2 for i, hit in enumerate(resolved) if hit is None]
    matched = matched[matched["image_file"].notna()].reset_index(drop=True)
    used = set(matched["image_file"])
    return MatchResult(
        table=matched,
        unmatched_rows=unmatched_rows,
        unused_images=[p for p in images if p not in used],
        n_rows=len(table),
        n_images=len(images),
    )
