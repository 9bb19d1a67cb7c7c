#!/usr/bin/env python3
"""A balanced decision rule on stored predictions (issue 25): does moving the multiclass decision away from
the plain argmax, towards the rare classes, raise balanced accuracy, and at what cost in accuracy?

The rule is post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
predict argmax_k log p_k - alpha * log pi_k, with pi the train split's class frequencies and alpha in
0, 0.1, ..., 1 (0 is the plain argmax, 1 divides by the priors) chosen on the VALIDATION rows for balanced
accuracy (the smallest alpha on a tie; the tool's own rule, image_learner/evaluation/class_decision.py, which
this calls); the test rows only report it. Nothing is trained: it reads each run's
predictions.csv (the probabilities the tool wrote, after its temperature and test-time augmentation), so it
is the multiclass counterpart of the binary threshold the tool already tunes on validation.

Two estimates per run:
- cross-fitted on validation alone (a decision the tool could make without the test rows): the validation
  lesions split in halves at random (200 times), alpha chosen on one half and scored on the other, both ways;
  the mean gain in balanced accuracy and change in accuracy;
- on the test rows: alpha chosen on all validation rows, plain vs adjusted paired over the same 1,000 lesion
  resamples (95% intervals);
and each part's balanced accuracy and accuracy for every alpha (``curves``): the validation curve is what the
choice saw, the test curve a hindsight bound on what any alpha could have given (nothing is chosen from it).

Since session 13 the tool's rule is gated (an alpha is eligible only where its paired gain over the argmax has
a 95% lower bound above 0 over the bootstrap of the rows' groups); ``alpha_ungated`` and the "ungated" arm are the
earlier rule (the curve's top), ``validation_cross_fitted_ungated`` its cross-fitted gain. A cross-validated run
(bench/preset_best.py's cv3 arms) chooses on its pooled out-of-fold rows, as the tool does.

    python bench/decision_rule.py [--work /work/bench_runs/preset] [--runs run-best160 run-best_each160 ...]
    python bench/decision_rule.py --runs run-cv3_each_balanced160 --repeats 50   # a cross-validated run
    python bench/decision_rule.py --one-se   # also a one-standard-error rule for alpha, cross-fitted (a rival)

The runs are bench/preset_best.py's (all 7,347 images of ham10000_200x150; HAM10000: Tschandl et al., Sci. Data
5, 180161 (2018), CC BY-NC-SA 4.0). Not a test: it reports numbers.
"""

import argparse
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import paired_arms, paired_delta  # noqa: E402
from image_learner.evaluation import bootstrap, class_decision  # noqa: E402

RUNS = ("run-defaults", "run-best", "run-best160", "run-best_each160", "run-best224",
        "run-best_each_balanced160-s43")  # the last: the per-image run repeated on another split (seed 43)


def one_se_alpha(record: dict, true, proba, groups, rng, resamples: int = 200) -> float:
    """The one-standard-error rule (Breiman et al., CART): the smallest alpha whose balanced accuracy is within
    one bootstrap standard error (resampling the groups whole) of the best alpha's, from the tool's choice on
    the same rows (``record``: class_decision.choose, its curve and best alpha). A rival to the tool's rule,
    tried here only."""
    scores = np.array([point["balanced_accuracy"] for point in record["curve"]])
    best_labels, ids = class_decision.decide(proba, record["offsets"]), np.unique(groups)
    spread = []
    for _ in range(resamples):
        rows = np.concatenate([np.flatnonzero(groups == g) for g in rng.choice(ids, len(ids))])
        spread.append(class_decision.balanced_accuracy(true[rows], best_labels[rows]))
    return class_decision.ALPHAS[int(np.flatnonzero(scores >= record["balanced_accuracy_chosen"] - np.std(spread))[0])]


def cross_fitted(labels, true, proba, classes, train_labels, groups, repeats: int = 200, seed: int = 0,
                 rule: str = "tool", resamples: int = 1000) -> dict:
    """Alpha chosen on one random half of the validation groups, scored on the other, both ways; ``rule``
    "tool" (class_decision.choose: the gated rule, its groups the lesions), "ungated" (the curve's top, the
    tool's rule before session 13) or "one_se" (one_se_alpha)."""
    rng = np.random.default_rng(seed)
    gains, accuracy_changes, alphas = [], [], []
    priors = class_decision.log_priors(train_labels, classes)
    for _ in range(repeats):
        first = (rng.random(groups.max() + 1) < 0.5)[groups]
        for fit, score in ((first, ~first), (~first, first)):
            record = class_decision.choose(labels[fit], proba[fit], classes, train_labels, groups=groups[fit],
                                           n_resamples=resamples)
            if rule == "ungated":
                record = {"alpha": record["highest_alpha"], "offsets": record["highest_alpha"] * priors}
            if rule == "one_se":
                alpha = one_se_alpha(record, true[fit], proba[fit], groups[fit], rng)
                record = {"alpha": alpha, "offsets": alpha * priors}
            plain, moved = class_decision.decide(proba[score], None), class_decision.decide(proba[score],
                                                                                              record["offsets"])
            gains.append(class_decision.balanced_accuracy(true[score], moved)
                         - class_decision.balanced_accuracy(true[score], plain))
            accuracy_changes.append(np.mean(moved == true[score]) - np.mean(plain == true[score]))
            alphas.append(record["alpha"])
    gains = np.array(gains)
    return {"balanced_accuracy_gain_mean": float(gains.mean()), "balanced_accuracy_gain_sd": float(gains.std()),
            "share_of_halves_with_a_gain": float(np.mean(gains > 0)),
            "accuracy_change_mean": float(np.mean(accuracy_changes)), "alpha_median": float(np.median(alphas)),
            "halves_scored": len(gains)}


def one_run(run: str, lesions: pd.Series, n: int = 1000, one_se: bool = False, repeats: int = 200) -> dict:
    table = pd.read_csv(os.path.join(run, "predictions.csv"))
    classes = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
    index = {c: i for i, c in enumerate(classes)}
    # a cross-validated run chooses on its pooled out-of-fold rows, their class shares the priors (as the tool)
    fitted_on = "cross_validation" if (table["split"] == "cross_validation").any() else "validation"
    train = table.loc[table["split"] == ("train" if fitted_on == "validation" else fitted_on), "true_label"]
    train = train.astype(str)
    parts = {}
    for part in (fitted_on, "test"):
        rows = table[table["split"] == part].sort_values("image").reset_index(drop=True)
        labels = rows["true_label"].astype(str).to_numpy()
        true = np.array([index[v] for v in labels])
        proba = rows[[f"prob_{c}" for c in classes]].to_numpy(float)
        groups = pd.factorize(lesions.loc[rows["image"]].to_numpy())[0]
        parts[part] = (rows, labels, true, proba, groups)
    rows, labels, true, proba, groups = parts[fitted_on]
    # the tool's choice exactly: its groups (sample id or duplicate group) and seed 42
    chosen = class_decision.choose(labels, proba, classes, train, groups=bootstrap.cluster_ids(rows), seed=42)
    ungated = chosen["highest_alpha"] * class_decision.log_priors(train, classes)
    out = {"classes": classes, "chosen_on": fitted_on, "rows": len(rows),
           "train_class_frequencies": np.exp(class_decision.log_priors(train, classes)).round(4).tolist(),
           "alpha_chosen_on_validation": chosen["alpha"], "alpha_ungated": chosen["highest_alpha"],
           "validation_cross_fitted": cross_fitted(labels, true, proba, classes, train, groups, repeats),
           "validation_cross_fitted_ungated": cross_fitted(labels, true, proba, classes, train, groups, repeats,
                                                           rule="ungated")}
    if one_se:  # the rival rule, validation only (fewer repeats: each choice bootstraps)
        out["validation_cross_fitted_one_se_rule"] = cross_fitted(labels, true, proba, classes, train, groups,
                                                                  repeats=50, rule="one_se")
    # every alpha on both parts: the validation curve is what the choice saw; the test curve is a hindsight
    # bound (what any alpha would have given), reported, never used to choose
    out["curves"] = {part: [{key: round(value, 4) for key, value in point.items()}  # the tool's own curve
                            for point in class_decision.choose(part_labels, p, classes, train, part, g)["curve"]]
                     for part, (_, part_labels, _, p, g) in parts.items()}
    rows, labels, true, proba, groups = parts["test"]
    # both from the probabilities (a run made with --class-decision balanced wrote adjusted labels already)
    arms = {"argmax": rows.assign(predicted_label=np.asarray(classes)[class_decision.decide(proba, None)]),
            "adjusted": rows.assign(
        predicted_label=np.asarray(classes)[class_decision.decide(proba, chosen["offsets"])]),
            "ungated": rows.assign(predicted_label=np.asarray(classes)[class_decision.decide(proba, ungated)])}
    points, samples = paired_arms(arms, classes, groups, ("balanced_accuracy", "accuracy"), n)
    out["test"] = {name: dict(points[name]) for name in arms}
    out["test"]["images"] = len(rows)
    for metric in ("balanced_accuracy", "accuracy"):
        out["test"][f"delta_{metric}"] = paired_delta(points, samples, "adjusted", "argmax", metric)
        out["test"][f"delta_{metric}_vs_ungated"] = paired_delta(points, samples, "adjusted", "ungated", metric)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/work/bench_runs/preset")
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--one-se", action="store_true", help="also cross-fit the one-standard-error rule")
    parser.add_argument("--repeats", type=int, default=200, help="cross-fitting's random halvings")
    args = parser.parse_args()
    lesions = pd.read_csv(os.path.join(args.work, "data", "ham_7347.csv")).set_index("image_path")["lesion_id"]
    warnings.simplefilter("ignore")
    result = {run: one_run(os.path.join(args.work, run), lesions, one_se=args.one_se, repeats=args.repeats)
              for run in args.runs}
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
