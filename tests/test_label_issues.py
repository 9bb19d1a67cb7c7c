"""Suspected label errors (image_learner/evaluation/label_issues.py) on fixtures where the answer is known."""

import numpy as np
import pandas as pd

from image_learner.evaluation import label_issues


def _planted(n=300, classes=("a", "b", "c"), flip_fraction=0.05, seed=0, split="cross_validation"):
    """Out-of-fold-like probabilities from a decent model of the TRUE labels, then 5% of given labels
    flipped to another class: the flipped rows' given labels get low probability."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(classes), n)
    logits = rng.normal(0, 1, (n, len(classes)))
    logits[np.arange(n), true] += 2.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = rng.choice(n, int(n * flip_fraction), replace=False)
    given[flipped] = (true[flipped] + rng.integers(1, len(classes), len(flipped))) % len(classes)
    table = pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "split": split,
                          "true_label": np.asarray(classes)[given],
                          "predicted_label": np.asarray(classes)[proba.argmax(axis=1)]})
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = proba[:, k]
    return table, {f"img{i}.png" for i in flipped}


def test_planted_flips_ranked_first():
    predictions, flipped = _planted()
    table, facts = label_issues.label_issue_table(predictions, ["a", "b", "c"])
    assert len(table) == 300 and facts["basis"].startswith("out-of-fold")
    assert _auroc_of_flips(table, flipped) > 0.9
    top = set(table["image"].head(len(flipped)))
    assert len(top & flipped) / len(flipped) >= 0.6  # precision at k = number flipped
    assert table["flagged"].sum() > 0 and table.loc[table["image"].isin(flipped), "flagged"].mean() >= 0.6
    assert list(table.columns) == label_issues.COLUMNS
    assert table["quality_score"].is_monotonic_increasing and table["rank"].iloc[0] == 1


def test_single_split_scores_held_out_rows_only():
    predictions, _ = _planted(n=90, split="train")
    predictions.loc[:29, "split"] = "validation"
    predictions.loc[30:59, "split"] = "test"
    table, facts = label_issues.label_issue_table(predictions, ["a", "b", "c"])
    assert len(table) == 60 and set(table["split"]) == {"validation", "test"}
    assert "held-out" in facts["basis"]
    row = predictions.set_index("image").loc[table["image"].iloc[0]]
    assert np.isclose(table["given_label_probability"].iloc[0], row[f"prob_{row['true_label']}"])


def test_no_held_out_rows_gives_empty_table_with_reason():
    predictions, _ = _planted(n=30, split="train")
    table, facts = label_issues.label_issue_table(predictions, ["a", "b", "c"])
    assert table.empty and facts["reason"]


def test_small_classes_fall_back_to_argmax_rule():
    predictions, _ = _planted(n=12)
    table, facts = label_issues.label_issue_table(predictions, ["a", "b", "c"])
    assert "differs" in facts["flag_rule"]
    assert (table["flagged"] == (table["given_label"] != table["predicted_label"])).all()


def _auroc_of_flips(table, flipped: set) -> float:
    """AUROC of (1 - quality score) for telling the ``flipped`` images from the rest."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(table["image"].isin(flipped), 1 - table["quality_score"]))
