"""Metadata fusion (``--tabular-columns age,sex,localization``): CSV columns as model inputs beside the image (pure).

Each column becomes one Ludwig input feature, concatenated with the image encoder's output by the concat
combiner (so the head sees image features and metadata side by side). Every statistic and vocabulary comes
from the TRAINING rows of the fit at hand (each cross-validation fold and the final model its own), never
from validation or test rows; Ludwig is handed values already encoded, so its own preprocessing, which
would look at every row it is given, learns nothing:

- kind: a column whose every non-missing CSV value is a finite number is a number, otherwise a category
  (decided once on the whole CSV column: a type, not a statistic);
- missing: an empty cell or a spreadsheet marker (``NA``, ``nan``, ``?``, ... input_utils); ``unknown`` is
  a category value like any other;
- number: z-scored with the training rows' mean and standard deviation (population; 1 if constant); a
  missing value gets the training mean (0 after scaling); Ludwig's ``normalization`` is off, its encoder
  is its default for numbers (passthrough);
- category: one-hot over the training rows' values (sorted) plus one unknown slot, which every missing
  value and every value not seen in the training rows takes; handed to Ludwig as a vector feature with the
  passthrough encoder. Not Ludwig's category type: it numbers its vocabulary by counts over every row it
  is given (test rows included) and adds its own unknown symbol only when some row needs it, so the
  model's shape would depend on the test rows. Under the concat combiner the head is linear in the
  one-hot, the same function class as Ludwig's dense category embedding followed by the head.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from image_learner.errors import InputError

OPTION = "--tabular-columns"
PREFIX = "tabular_"  # the prepared table's raw text columns: tabular_<CSV column>
MAX_CATEGORIES = 200  # distinct values of a category column in the CSV; more is refused (an id or free text)
MAX_COLUMNS = 50
LIMIT = 1e100  # |mean| and std bounds, as a regression target's (model_manifest.TARGET_LIMIT)
KINDS = ("number", "category")
MAX_Z = 1e6  # a number this many training standard deviations away is refused (a typo or a unit mix-up)


def feature_name(index: int) -> str:
    """Ludwig's name for the ``index``-th (0-based) tabular feature: never the user's column name."""
    return f"tabular_{index + 1}"


def parse_spec(spec: str | None) -> tuple[str, ...]:
    """``"age, sex,localization"`` -> the names (or 1-based indices) as written; ``""``: off. A value that
    names nothing (``","``) or has an empty name is an InputError."""
    if spec is None or spec == "":
        return ()
    names = tuple(part.strip() for part in str(spec).split(","))
    if all(n == "" for n in names):
        raise InputError(f"{OPTION} {spec!r} names no column; give CSV column names such as age,sex,localization")
    if "" in names:
        raise InputError(f"{OPTION} {spec!r} has an empty column name; separate names with single commas")
    if len(names) > MAX_COLUMNS:
        raise InputError(f"{OPTION} names {len(names)} columns; at most {MAX_COLUMNS}")
    return names


def is_missing(values) -> np.ndarray:
    """True for an empty cell or a missing-value marker (input_utils.MISSING_VALUE_MARKERS)."""
    from image_learner.data.input_utils import MISSING_VALUE_MARKERS

    text = pd.Series(values, dtype=object).fillna("").astype(str).str.strip()
    return (text.eq("") | text.str.lower().isin(MISSING_VALUE_MARKERS)).to_numpy()


def _numbers(values) -> np.ndarray | None:
    """The non-missing values as floats, or None when one of them is not a finite number."""
    text = pd.Series(values, dtype=object).fillna("").astype(str).str.strip()[~is_missing(values)]
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(float)
    return numbers if np.isfinite(numbers).all() else None


def resolve_columns(raw: pd.DataFrame, names, reserved: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    """((CSV column, kind), ...) for ``names``; ``reserved``: role -> column (image, label, split, sample
    id) that may not be an input. Unknown, reserved or repeated columns, a column without any value, and a
    category with more than MAX_CATEGORIES distinct values are InputErrors naming the option and column."""
    from image_learner.data.input_utils import resolve_column

    resolved: list[tuple[str, str]] = []
    for name in names:
        column = resolve_column(raw, name, "tabular", OPTION)
        role = next((r for r, c in reserved.items() if c and c == column), None)
        if role:
            raise InputError(f"{OPTION}: {column!r} is the {role} column; it cannot also be a model input")
        if column in (c for c, _ in resolved):
            raise InputError(f"{OPTION} names column {column!r} twice")
        values = raw[column]
        missing = is_missing(values)
        if missing.all():
            raise InputError(f"{OPTION}: column {column!r} has no value on any CSV row")
        kind = "number" if _numbers(values) is not None else "category"
        if kind == "category":
            distinct = pd.Series(values[~missing]).astype(str).str.strip().nunique()
            if distinct > MAX_CATEGORIES:
                raise InputError(f"{OPTION}: column {column!r} has {distinct} distinct values; a category column "
                                 f"may have at most {MAX_CATEGORIES} (an identifier or free text is not a feature)")
        resolved.append((column, kind))
    return tuple(resolved)


def fit(train: pd.DataFrame, kinds: dict[str, str]) -> list[dict]:
    """The encoding records of one fit from its TRAINING rows only (``train``: the prepared table's rows with
    split 0, columns tabular_<column>): a number's mean and std, a category's sorted vocabulary."""
    records = []
    for column, kind in kinds.items():
        values = train[PREFIX + column].to_numpy(object)
        if kind == "number":
            numbers = _numbers(values)
            if numbers is None:  # decided on the whole column, so not expected: refuse rather than guess
                raise InputError(f"{OPTION}: column {column!r} is not numeric in the training rows")
            with np.errstate(over="ignore", invalid="ignore"):
                mean = float(numbers.mean()) if len(numbers) else 0.0
                std = float(numbers.std()) if len(numbers) else 1.0
            std = std if std > 0 else 1.0
            if not (math.isfinite(mean) and abs(mean) <= LIMIT and math.isfinite(std) and 1 / LIMIT <= std <= LIMIT):
                raise InputError(f"{OPTION}: column {column!r} has training mean {mean:g} and standard deviation "
                                 f"{std:g}, beyond what Image Learner handles (|mean| up to {LIMIT:g}): rescale it")
            records.append({"column": column, "kind": "number", "mean": mean, "std": std})
        else:
            text = pd.Series(values, dtype=object).astype(str).str.strip()[~is_missing(values)]
            records.append({"column": column, "kind": "category", "vocabulary": sorted(set(text))})
    return records


def encode(raw: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Ludwig's columns (tabular_1, ...) for the rows of ``raw`` (columns tabular_<column>, raw text) under
    ``records`` (from training rows): z-scores with missing -> 0, or one-hot strings with the unknown slot last."""
    out = {}
    for k, record in enumerate(records):
        values = raw[PREFIX + record["column"]].to_numpy(object)
        missing = is_missing(values)
        if record["kind"] == "number":
            numbers = pd.to_numeric(pd.Series(values, dtype=object).astype(str).str.strip().where(~missing),
                                    errors="coerce").to_numpy(float)
            if not np.isfinite(numbers[~missing]).all():
                bad = int(np.flatnonzero(~missing & ~np.isfinite(numbers))[0])
                raise InputError(f"{OPTION}: column {record['column']!r} is a number for this model, but a row has "
                                 f"{str(values[bad])[:40]!r}")
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = np.where(missing, 0.0, (numbers - record["mean"]) / record["std"])
            if not (np.abs(scaled) <= MAX_Z).all():  # Ludwig computes in float32: refuse, never an inf
                bad = int(np.flatnonzero(~(np.abs(scaled) <= MAX_Z))[0])
                raise InputError(f"{OPTION}: column {record['column']!r} has the value {str(values[bad])[:40]!r}, more "
                                 f"than {MAX_Z:g} training standard deviations from the training mean")
            out[feature_name(k)] = scaled
        else:
            slot = {value: i for i, value in enumerate(record["vocabulary"])}
            unknown = len(slot)
            size = unknown + 1
            texts = pd.Series(values, dtype=object).astype(str).str.strip().to_numpy()
            index = [unknown if m else slot.get(t, unknown) for t, m in zip(texts, missing)]
            out[feature_name(k)] = [" ".join("1" if j == i else "0" for j in range(size)) for i in index]
    return pd.DataFrame(out, index=raw.index)


def matrix(raw: pd.DataFrame, records: list[dict]) -> np.ndarray:
    """``encode``'s values as the N x width float32 block the concat combiner sees after the image features:
    each feature's numbers in the config's order (predict's network without Ludwig)."""
    blocks = []
    for name, column in encode(raw, records).items():
        if pd.api.types.is_numeric_dtype(column):
            blocks.append(column.to_numpy(np.float32)[:, None])
        else:
            blocks.append(np.array([text.split() for text in column], dtype=np.float32).reshape(len(column), -1))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(raw), 0), np.float32)


def ludwig_features(records: list[dict] | None) -> list[dict]:
    """Ludwig input features for ``records``: numbers with normalisation off (done by ``encode``) and Ludwig's
    default number encoder (passthrough); categories as fixed-size one-hot vectors (passthrough)."""
    features = []
    for k, record in enumerate(records or []):
        if record["kind"] == "number":
            features.append({"name": feature_name(k), "type": "number", "preprocessing": {"normalization": None},
                             "encoder": {"type": "passthrough"}})
        else:
            features.append({"name": feature_name(k), "type": "vector", "encoder": {"type": "passthrough"},
                             "preprocessing": {"vector_size": width(record)}})
    return features


def width(record: dict) -> int:
    """How many numbers the feature adds to the concatenation: 1, or the vocabulary plus the unknown slot."""
    return 1 if record["kind"] == "number" else len(record["vocabulary"]) + 1


def check_records(records) -> str | None:
    """What is wrong with a manifest's ``tabular`` list (None: as training writes it)."""
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_COLUMNS:
        return f"a list of 1 to {MAX_COLUMNS} column records"
    seen = set()
    for k, record in enumerate(records):
        if not isinstance(record, dict) or record.get("kind") not in KINDS:
            return f"entry {k}: an object with kind 'number' or 'category'"
        fields = {"column", "kind", "mean", "std"} if record["kind"] == "number" else {"column", "kind", "vocabulary"}
        if set(record) != fields:
            return f"entry {k}: exactly the fields {', '.join(sorted(fields))}"
        column = record["column"]
        if not isinstance(column, str) or not column or column in seen:
            return f"entry {k}: a column name not used before"
        seen.add(column)
        if record["kind"] == "number":
            mean, std = record["mean"], record["std"]
            if not (_finite(mean) and abs(mean) <= LIMIT and _finite(std) and 1 / LIMIT <= std <= LIMIT):
                return f"entry {k}: a finite mean (|mean| up to {LIMIT:g}) and std from {1 / LIMIT:g} to {LIMIT:g}"
        else:
            vocabulary = record["vocabulary"]
            if not (isinstance(vocabulary, list) and len(vocabulary) <= MAX_CATEGORIES
                    and all(isinstance(v, str) and v for v in vocabulary) and vocabulary == sorted(set(vocabulary))):
                return f"entry {k}: a sorted list of at most {MAX_CATEGORIES} distinct non-empty values"
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_columns(raw: pd.DataFrame, records: list[dict], csv_name: str) -> None:
    """Predict: the CSV must have every column the model was trained with (exit 2 naming the first missing)."""
    missing = [r["column"] for r in records if r["column"] not in raw.columns]
    if missing:
        raise InputError(f"metadata CSV {csv_name!r} has no column {missing[0]!r}; this model uses the tabular "
                         f"columns {', '.join(r['column'] for r in records)} beside the image")


def describe(records: list[dict] | None) -> str | None:
    """One line for the report and the log: which columns, and how each was encoded."""
    if not records:
        return None
    parts = []
    for r in records:
        if r["kind"] == "number":
            parts.append(f"{r['column']} (number, z-scored with the training rows' mean {r['mean']:.4g} and "
                         f"std {r['std']:.4g}; missing -> training mean)")
        else:
            parts.append(f"{r['column']} (category, {len(r['vocabulary'])} training values + unknown; missing or "
                         "unseen -> unknown)")
    return "image + " + "; ".join(parts) + ", through Ludwig's concat combiner"
