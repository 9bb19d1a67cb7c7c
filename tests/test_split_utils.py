"""The split: reproducible row for row, stratified within one row per class, groups never straddle."""

import numpy as np
import pandas as pd
import pytest

import split_utils
from image_learner.errors import InputError


def _labels(counts: dict[str, int]) -> np.ndarray:
    return np.concatenate([[label] * n for label, n in counts.items()])


COUNTS = {"akiec": 23, "bcc": 37, "bkl": 51, "df": 9, "mel": 70, "nv": 331, "vasc": 14}


def test_same_seed_same_split_row_for_row():
    labels = _labels(COUNTS)
    first = split_utils.random_split(labels, seed=42)
    again = split_utils.random_split(labels, seed=42)
    other = split_utils.random_split(labels, seed=43)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_stratified_ratios_within_one_row_per_class():
    labels = _labels(COUNTS)
    probs = (0.7, 0.1, 0.2)
    codes = split_utils.random_split(labels, probabilities=probs, seed=7)
    for label, n in COUNTS.items():
        got = np.bincount(codes[labels == label], minlength=3)
        assert got.sum() == n
        for k in range(3):
            assert abs(got[k] - probs[k] * n) <= 1.0, (label, k, got)


@pytest.mark.parametrize("probs", [(0.8, 0.0, 0.2), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25)])
def test_other_probabilities_are_honoured(probs):
    labels = _labels(COUNTS)
    codes = split_utils.random_split(labels, probabilities=probs, seed=1)
    for label, n in COUNTS.items():
        got = np.bincount(codes[labels == label], minlength=3)
        assert np.all(np.abs(got - np.asarray(probs) * n) <= 1.0)


def test_groups_never_straddle_and_ratios_stay_close():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), rng.integers(1, 5, size=200))  # lesions with 1-4 images
    labels = np.array(["mel" if g % 3 == 0 else "nv" for g in groups])
    codes = split_utils.random_split(labels, groups, seed=3)
    per_group = pd.DataFrame({"g": groups, "s": codes}).groupby("g")["s"].nunique()
    assert per_group.max() == 1
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert np.all(np.abs(shares - np.array([0.7, 0.1, 0.2])) < 0.03)


def test_carved_validation_keeps_groups_and_test_untouched():
    groups = np.repeat(np.arange(60), 2)  # an image and its flipped copy
    labels = np.where(groups % 2 == 0, "a", "b")
    user = np.where(groups % 5 == 0, 2, 0)
    codes = split_utils.carve_validation(labels, user, groups, seed=5)
    assert np.array_equal(codes == 2, user == 2)  # test rows never move
    assert (codes == 1).sum() > 0
    per_group = pd.DataFrame({"g": groups, "s": codes}).groupby("g")["s"].nunique()
    assert per_group.max() == 1
    # validation share of the former train rows: 0.1 / (0.7 + 0.1), within one group per class
    train_rows = (user == 0).sum()
    assert abs((codes == 1).sum() - train_rows * 0.125) <= 4


@pytest.mark.parametrize("values, expected", [
    (["0", "1", "2"], [0, 1, 2]),
    (["train", "Validation", "TEST"], [0, 1, 2]),
    (["training", "val", "testing"], [0, 1, 2]),
    (["1.0", " 2 ", "0.0"], [1, 2, 0]),
])
def test_split_column_spellings(values, expected):
    assert split_utils.parse_split_column(pd.Series(values), "split").tolist() == expected


def test_split_column_bad_value_names_the_line():
    with pytest.raises(InputError, match=r"line 3: 'holdout'"):
        split_utils.parse_split_column(pd.Series(["train", "holdout"]), "split")


@pytest.mark.parametrize("probs, message", [
    ((0.7, 0.2, 0.2), "sum to 1"),
    ((0.9, -0.1, 0.2), "non-negative"),
    ((0.5, 0.5), "three numbers"),
    ((0.0, 0.5, 0.5), "train probability"),
])
def test_bad_probabilities_are_refused(probs, message):
    with pytest.raises(InputError, match=message):
        split_utils.validate_probabilities(probs)


def test_union_groups_joins_transitively():
    lesion = np.array(["L1", "L2", "L3", "L4"])
    duplicate = np.array([0, 1, 1, 2])  # rows 1 and 2 are the same picture
    assert split_utils.union_groups(lesion, duplicate).tolist() == [0, 1, 1, 2]
    assert split_utils.union_groups(np.array(["a", "b", "a"]), np.array([0, 1, 1])).tolist() == [0, 0, 0]


def test_straddling_groups_are_found():
    report = split_utils.find_straddling_groups([0, 0, 1, 1, 2], [0, 2, 1, 1, 0])
    assert report.n_groups == 1 and report.n_rows == 2 and report.examples == [[0, 1]]


def test_ties_do_not_all_go_to_train():
    """Two patients of five images per class: the second patient ties train and test (2 rows below
    target each); it used to go to train every time: train 40, validation 0, test 0."""
    labels = np.repeat(list("abcd"), 10)
    groups = np.repeat(np.arange(8), 5)
    for seed in range(5):
        codes = split_utils.random_split(labels, groups, seed=seed)
        for label in "abcd":
            assert np.bincount(codes[labels == label], minlength=3).tolist() == [5, 0, 5]


def test_exact_ties_are_broken_by_the_seed():
    """Equal shares, the larger group first: train and test tie exactly (also relative to their
    targets), so the seed decides; it used to be train every time."""
    labels, groups = np.array(["a"] * 3), np.array([0, 0, 1])
    firsts = {int(split_utils.random_split(labels, groups, (0.5, 0.0, 0.5), seed)[0]) for seed in range(20)}
    assert firsts == {0, 2}
    assert split_utils.random_split(labels, groups, (0.5, 0.0, 0.5), 3).tolist() == \
        split_utils.random_split(labels, groups, (0.5, 0.0, 0.5), 3).tolist()


def test_an_empty_validation_split_is_an_error_naming_the_counts():
    labels = np.repeat(list("abcd"), 10)
    groups = np.repeat(np.arange(8), 5)
    codes = split_utils.random_split(labels, groups)
    errors, _ = split_utils.check_split(labels, codes, groups, (0.7, 0.1, 0.2))
    assert errors[0] == "the validation split is empty (train 20, validation 0, test 20 images)"
    assert "8 group(s) for 40 images" in errors[-1] and "--split-column" in errors[-1]
    # asked for: a 0 validation share means no validation split
    errors, _ = split_utils.check_split(labels, split_utils.random_split(labels, groups, (0.5, 0, 0.5)), groups,
                                        (0.5, 0, 0.5))
    assert errors == []


def test_a_class_without_test_rows_is_an_error_for_a_random_split_and_a_warning_for_a_user_split():
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["rare"])
    codes = np.array([0] * 7 + [1] + [2] * 2 + [0] * 7 + [1] + [2] * 2 + [0])
    groups = np.arange(len(labels))
    errors, _ = split_utils.check_split(labels, codes, groups, (0.7, 0.1, 0.2))
    assert errors[0] == ("class(es) without training or test images: 'rare' (1 image(s) in 1 group(s): "
                         "train 1, validation 0, test 0)")
    errors, warnings = split_utils.check_split(labels, codes, groups, (0.7, 0.1, 0.2), user_column="split")
    assert errors == []
    assert any("'rare' (1 image(s) in 1 group(s): train 1, validation 0, test 0) have no test rows" in w
               for w in warnings)
    no_validation = np.where(codes == 1, 0, codes)
    errors, warnings = split_utils.check_split(labels, no_validation, groups, (0.7, 0.1, 0.2), user_column="split")
    assert errors == [] and any(w.startswith("the validation split is empty (train 17, validation 0, test 4")
                                for w in warnings)


def test_split_column_errors_name_the_csv_line_given():
    with pytest.raises(InputError, match=r"CSV line 9: 'holdout'"):
        split_utils.parse_split_column(pd.Series(["train", "holdout"]), "split", csv_lines=[4, 9])
