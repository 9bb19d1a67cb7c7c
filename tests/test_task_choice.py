"""--task: which task a label column makes (auto-detection rules), and the errors for a task that cannot fit.
Pure: no images, no training."""

import numpy as np
import pytest

from image_learner.errors import InputError
from image_learner.data.task_choice import REGRESSION_MIN_DISTINCT, as_number, choose_task, numbers_only

AGES = [str(a) for a in range(20, 80, 5)]  # 12 distinct numbers


@pytest.mark.parametrize("labels, task, why", [
    (["mel", "nv", "mel"], "binary", "two labels"),
    (["0", "1", "1", "0"], "binary", "two labels"),  # numeric 0/1: still two labels
    (["2.5", "7.5"], "binary", "two labels"),
    (["0", "1", "2", "1"], "multiclass", "only 3 distinct values"),  # class codes
    ([str(k) for k in range(10)], "multiclass", "only 10 distinct values"),  # 10 codes: still classes
    ([str(k) for k in range(11)], "regression", "11 distinct values"),  # > 10: a quantity
    (AGES, "regression", "12 distinct values"),
    ([f"{a}.0" for a in AGES] + AGES, "regression", "12 distinct values"),  # 55 and 55.0 are one value
    ([" 1e1", "2.5e1"] + AGES, "regression", "numeric"),
    (["-3.5", "0", "4"] + AGES, "regression", "numeric"),
    (["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], "multiclass", "7 labels"),
    ([f"patient{k}" for k in range(40)], "multiclass", "40 labels"),  # many labels, not numbers
    (AGES + ["old"], "multiclass", "13 labels"),  # one word among numbers: classes, never a silent drop
    (["NaN", "inf"] + [str(k) for k in range(3)], "multiclass", "5 labels"),  # NaN / inf are not numbers
])
def test_auto_detection_rules(labels, task, why):
    chosen, reason = choose_task(labels, "auto", "target")
    assert chosen == task
    assert reason.startswith("auto:") and why in reason and "'target'" in reason


def test_the_regression_threshold_is_more_than_ten_distinct_values():
    assert REGRESSION_MIN_DISTINCT == 11
    assert choose_task([str(k) for k in range(11)] * 3, "auto", "y")[0] == "regression"
    assert choose_task([str(k / 10) for k in range(10)] * 3, "auto", "y")[0] == "multiclass"


@pytest.mark.parametrize("marker", ["NA", "N/A", "NaN", "null", "-", "?"])
def test_numbers_with_missing_value_markers_are_an_error_in_auto(marker):
    """Ages with a few 'NA' cells: neither 12 age classes plus a class 'NA' nor silently dropped rows."""
    labels = AGES + [marker, "40"]
    with pytest.raises(InputError) as err:
        choose_task(labels, "auto", "age", csv_lines=range(10, 10 + len(labels)))
    text = str(err.value)
    assert "'age'" in text and repr(marker) in text and f"CSV lines {10 + len(AGES)}" in text
    assert "--task multiclass" in text
    # asked for explicitly, the same column trains one class per value (today's label rule)
    assert choose_task(labels, "multiclass", "age")[0] == "multiclass"


def test_explicit_regression_needs_numbers_and_names_the_offending_rows():
    with pytest.raises(InputError) as err:
        choose_task(["1.5", "2", "n/a", "3", "abc"], "regression", "score", csv_lines=[2, 3, 5, 7, 8])
    text = str(err.value)
    assert "'score'" in text and "2 row(s)" in text and "'abc'" in text and "'n/a'" in text
    assert "CSV lines 5, 8" in text
    with pytest.raises(InputError, match="one value only"):
        choose_task(["4", "4.0", "4"], "regression", "score")
    task, reason = choose_task(["0", "1", "2"], "regression", "grade")  # few values, but asked for
    assert task == "regression" and "3 distinct values" in reason


def test_explicit_binary_and_multiclass_need_their_class_counts():
    with pytest.raises(InputError) as err:
        choose_task(["a", "b", "c"], "binary", "dx")
    assert "exactly two labels" in str(err.value) and "'dx'" in str(err.value) and "'c'" in str(err.value)
    with pytest.raises(InputError, match="exactly two"):
        choose_task(["a", "a"], "binary", "dx")
    with pytest.raises(InputError, match="binary task"):
        choose_task(["a", "b"], "multiclass", "dx")
    assert choose_task(AGES, "multiclass", "age")[0] == "multiclass"  # numbers as classes, when asked
    assert choose_task(["1", "2"], "binary", "dx") == ("binary", "--task binary (labels '1', '2')")
    with pytest.raises(InputError, match="--task 'numeric'"):
        choose_task(AGES, "numeric", "age")


def test_numbers():
    assert as_number(" 55 ") == 55.0 and as_number("5.5e1") == 55.0 and as_number("-0.5") == -0.5
    for text in ("NaN", "inf", "-Infinity", "1,5", "", "N/A", "55 years"):
        assert as_number(text) is None
    np.testing.assert_array_equal(numbers_only(["1", "2.5"], "y"), [1.0, 2.5])
