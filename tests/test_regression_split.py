"""A regression target is split stratified by quantile bins of its groups' values: every split gets low,
middle and high values; groups stay whole; the same seed gives the same split. Pure: no images."""

import numpy as np
import pytest

import split_utils


def _ages(n_groups=70, per_group=2, seed=0):
    rng = np.random.default_rng(seed)
    group_age = np.round(rng.gamma(4.0, 12.0, n_groups))  # skewed, with ties
    groups = np.repeat(np.arange(n_groups), per_group)
    return group_age[groups] + rng.normal(0, 0.1, len(groups)), groups


def test_quantile_bins_have_equal_group_counts_and_keep_groups_whole():
    values, groups = _ages()
    bins = split_utils.quantile_bins(values, groups)
    assert sorted(set(bins)) == ["q1", "q2", "q3", "q4", "q5"]
    per_group = {g: set(bins[groups == g]) for g in np.unique(groups)}
    assert all(len(b) == 1 for b in per_group.values())
    counts = np.unique([b.pop() for b in per_group.values()], return_counts=True)[1]
    assert counts.tolist() == [14] * 5
    # bins are ordered by value: every value of q1 is at most every value of q5
    assert values[bins == "q1"].max() <= values[bins == "q5"].min()


@pytest.mark.parametrize("n_groups, n_bins", [(5, 1), (19, 1), (20, 2), (45, 4), (1000, 5)])
def test_few_groups_give_fewer_bins(n_groups, n_bins):
    """At least 10 groups a bin, so a 10% validation share can take one group from each bin."""
    values = np.arange(n_groups, dtype=float)
    assert len(set(split_utils.quantile_bins(values))) == n_bins


def test_every_split_gets_a_spread_of_the_target_and_groups_are_intact():
    values, groups = _ages(n_groups=200)
    codes = split_utils.random_split(split_utils.quantile_bins(values, groups), groups, (0.7, 0.1, 0.2), seed=3)
    assert all(len(set(codes[groups == g])) == 1 for g in np.unique(groups))
    low, high = np.quantile(values, [0.2, 0.8])
    for k in range(3):
        part = values[codes == k]
        assert (part <= low).any() and (part >= high).any()  # both tails in every split
        assert abs(np.median(part) - np.median(values)) <= 0.1 * np.std(values) + 1
    shares = np.bincount(codes, minlength=3) / len(codes)
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.02)


def test_the_same_seed_gives_the_same_split():
    values, groups = _ages()
    strata = split_utils.quantile_bins(values, groups)
    first = split_utils.random_split(strata, groups, (0.7, 0.1, 0.2), seed=42)
    again = split_utils.random_split(split_utils.quantile_bins(values, groups), groups, (0.7, 0.1, 0.2), seed=42)
    other = split_utils.random_split(strata, groups, (0.7, 0.1, 0.2), seed=7)
    assert (first == again).all() and (first != other).any()


def test_check_split_has_no_class_rules_for_regression_but_refuses_empty_splits():
    values, groups = _ages(n_groups=30)
    codes = split_utils.random_split(split_utils.quantile_bins(values, groups), groups, (0.7, 0.1, 0.2), seed=1)
    # every value is its own "class": as classes this would be one error per value
    errors, _ = split_utils.check_split(values, codes, groups, (0.7, 0.1, 0.2))
    assert errors and "class(es)" in errors[0]
    errors, warnings = split_utils.check_split(values, codes, groups, (0.7, 0.1, 0.2), regression=True)
    assert errors == [] and not any("class" in w for w in warnings)
    no_test = np.where(codes == 2, 0, codes)
    errors, _ = split_utils.check_split(values, no_test, groups, (0.7, 0.1, 0.2), regression=True)
    assert errors[0].startswith("the test split is empty") and "rare class" not in errors[-1]
