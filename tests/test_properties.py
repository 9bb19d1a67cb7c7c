"""Property-based tests over CSV/ZIP layouts for the matcher and the splitter: no crash but the
documented errors, and the invariants hold (every matched row used once; groups never straddle)."""

import posixpath

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import split_utils
from image_learner.data.input_utils import InputError, match_rows_to_images, normalise_csv_path

NAME = st.text(alphabet="abcXYZ019_-éü", min_size=1, max_size=6)
FOLDERS = st.lists(NAME, min_size=0, max_size=2)
EXT = st.sampled_from([".png", ".jpg", ".JPG", ".tif", ".txt"])


@st.composite
def layouts(draw):
    files = draw(st.lists(st.tuples(FOLDERS, NAME, EXT), min_size=1, max_size=25))
    paths = sorted({"/".join([*folders, name + ext]) for folders, name, ext in files})
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        target = draw(st.sampled_from(paths + ["missing/none.png"]))
        spelling = draw(st.sampled_from(["as_is", "dot", "backslash", "basename"]))
        value = {"as_is": target, "dot": "./" + target, "backslash": target.replace("/", "\\"),
                 "basename": posixpath.basename(target)}[spelling]
        rows.append({"image_path": value, "label": draw(st.sampled_from(["a", "b", "c"]))})
    return paths, pd.DataFrame(rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_matcher_invariants(layout):
    paths, table = layout
    try:
        result = match_rows_to_images(table, "image_path", paths)
    except InputError as err:
        assert "matches several files" in str(err)  # the only documented refusal
        return
    images = [p for p in paths if p.lower().endswith((".png", ".jpg", ".tif"))]
    assert len(result.table) + len(result.unmatched_rows) == len(table)
    assert set(result.table["image_file"]) <= set(images)
    assert set(result.unused_images) == set(images) - set(result.table["image_file"])
    for raw, hit in zip(result.table["image_path"], result.table["image_file"]):
        wanted = normalise_csv_path(raw)
        assert hit == wanted or hit.endswith("/" + wanted) or posixpath.basename(hit) == posixpath.basename(wanted)


@st.composite
def labelled_groups(draw):
    n = draw(st.integers(1, 120))
    labels = draw(st.lists(st.sampled_from(["akiec", "mel", "nv"]), min_size=n, max_size=n))
    groups = draw(st.lists(st.integers(0, max(0, n // 2)), min_size=n, max_size=n))
    train = draw(st.floats(0.05, 0.95))
    val = draw(st.floats(0.0, 1.0 - train))
    return np.array(labels), np.array(groups), (train, val, 1.0 - train - val), draw(st.integers(0, 2**31))


@settings(max_examples=300, deadline=None)
@given(labelled_groups())
def test_splitter_invariants(case):
    labels, groups, probs, seed = case
    codes = split_utils.random_split(labels, groups, probs, seed)
    assert len(codes) == len(labels) and set(codes.tolist()) <= {0, 1, 2}
    assert pd.DataFrame({"g": groups, "s": codes}).groupby("g")["s"].nunique().max() == 1
    assert np.array_equal(codes, split_utils.random_split(labels, groups, probs, seed))
    if probs[1] > 0:
        carved = split_utils.carve_validation(labels, np.where(codes == 1, 0, codes), groups, probs, seed)
        assert np.array_equal(carved == 2, codes == 2)
        assert pd.DataFrame({"g": groups, "s": carved}).groupby("g")["s"].nunique().max() == 1
