"""The run's data audit (``--audit``, on by default): label_issues.csv (suspected label errors) and
embeddings.csv (each image's encoder features), with their facts for run_summary.json. Classification
only for the label issues; a regression gets embeddings and a note. Nothing is relabelled or dropped.

Cost: one more forward pass over every image (no gradients), like the "predicting every image" stage,
and cleanlab on the scored rows (well under a second for thousands of rows); the report's map adds a
t-SNE of at most embeddings.MAP_CAP points (about a minute on one core at 3,000 points).
"""

from __future__ import annotations

import os

import pandas as pd

from image_learner.data.input_utils import read_output_csv
from image_learner.evaluation import embeddings, label_issues
from image_learner.run_files import log

LABEL_ISSUES_CSV = "label_issues.csv"
EMBEDDINGS_CSV = "embeddings.csv"


def write_label_issues(predictions: pd.DataFrame, classes: list[str], task: str, out: str) -> dict:
    """label_issues.csv for a classification (its facts); a regression: a note, no file."""
    if task == "regression":
        return {"skipped": "a regression has no labels to doubt (label issues are for classification)"}
    table, facts = label_issues.label_issue_table(predictions, classes)
    table.to_csv(os.path.join(out, LABEL_ISSUES_CSV), index=False)
    return facts


def write_embeddings(ludwig_model, table: pd.DataFrame, split_names, image_size: int, batch_size: int,
                     out: str, workers: int = 1) -> dict:
    """embeddings.csv, one row per image of ``table`` (its ``read_path``, the file the model read), decoded in
    ``workers`` threads."""
    features = embeddings.encoder_features(ludwig_model, list(table["read_path"]), image_size, batch_size, workers)
    frame = embeddings.embeddings_table(table["image"], split_names, table["label"].astype(str), features)
    frame.to_csv(os.path.join(out, EMBEDDINGS_CSV), index=False)
    return {"rows": int(len(frame)), "width": int(features.shape[1]),
            "source": "the delivered model's image encoder output (the backbone's pooled features)"}


def run(data, ludwig_model, opts, out: str, timer) -> dict:
    """Both files for a finished fit (predictions.csv already written); their facts for run_summary.json."""
    from image_learner.training import model_fit

    # as written, less write_output_csv's spreadsheet guard: a class named "=1+1" is that class again
    predictions = read_output_csv(os.path.join(out, "predictions.csv"))
    with timer.stage("auditing the labels and mapping the images"):
        facts = {"label_issues": write_label_issues(predictions, model_fit.class_order(data), data.task, out),
                 "embeddings": write_embeddings(ludwig_model, data.table, predictions["split"], opts.image_size,
                                                opts.batch_size, out, opts.preprocessing_workers)}
    issues = facts["label_issues"]
    if "flagged" in issues:
        log(f"label audit: {issues['flagged']} of {issues['rows']} images flagged as suspected label errors, "
            f"scored on {issues['basis']} ({LABEL_ISSUES_CSV}; suspicion only, nothing relabelled)")
    return facts
