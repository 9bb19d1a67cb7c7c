"""MODEL_CARD.md: what a trained model is, what it was trained and measured on, and what it is not for
(pure; no Ludwig). Written beside the model's files and carried in trained_model.zip.

Every fact comes from the run summary training writes (run_summary.json, its metrics included), so the
card never says more than the run did. User text (class names, column and file names, the licence the
user states) is neutralised by ``md_text``: it cannot open a heading, a table cell, a link, raw HTML or
a code block, whatever characters it holds.
"""

from __future__ import annotations

import re
import unicodedata

from image_learner.errors import InputError

CARD = "MODEL_CARD.md"
MAX_LICENCE_CHARS = 500
NOT_STATED = "not stated"
# Inline syntax only: user text never starts a line (newlines are removed), so "#", "-", "1." or "="
# cannot open a block; a "(" opens a link only after a "]", which is escaped.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>|~$&])")


def md_text(value) -> str:
    """User text as inert Markdown: control and format characters (newlines, bidi overrides) become
    spaces, runs of spaces one, and every inline Markdown or HTML mark (emphasis, code, links, tags,
    entities, table cells, maths) is backslash-escaped (CommonMark renders ``\\X`` as a literal X)."""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(value))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(text.split()))


def check_licence(text: str) -> str:
    """``--data-licence`` as one line of at most MAX_LICENCE_CHARS characters (InputError otherwise); empty
    means NOT_STATED."""
    text = " ".join(str(text or "").split())
    if len(text) > MAX_LICENCE_CHARS:
        raise InputError(f"--data-licence is {len(text)} characters long; at most {MAX_LICENCE_CHARS} (name the "
                         "licence and where it is written, e.g. 'CC BY-NC 4.0, see the data set's page')")
    return text or NOT_STATED


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def _interval(values: dict, name: str) -> str:
    value = _number(values.get(name))
    low, high = (values.get("ci95") or {}).get(name) or (None, None)
    return value if low is None or high is None else f"{value} (95% interval {_number(low)} to {_number(high)})"


def _headline_names(values: dict) -> list[str]:
    """The metrics with bootstrap intervals, then calibration (classification only)."""
    names = list((values.get("ci95") or {}).keys())
    return names + [n for n in ("expected_calibration_error",) if n in values and n not in names]


def _metric_lines(values: dict, what: str, seed) -> list[str]:
    lines = [f"Computed on {what} ({values.get('n', 0)} rows); intervals: percentile bootstrap over those rows "
             f"(1,000 resamples, seed {seed}).", ""]
    return lines + [f"- {name.replace('_', ' ')}: {_interval(values, name)}" for name in _headline_names(values)]


def _metrics_section(summary: dict) -> list[str]:
    metrics = summary.get("metrics") or {}
    cv = metrics.get("cross_validation")
    seed = (summary.get("training") or {}).get("random_seed")
    out = ["## Metrics", ""]
    if cv:
        out += _metric_lines(cv.get("pooled") or {}, f"the pooled out-of-fold predictions of {cv.get('k')}-fold "
                             "cross-validation (each row predicted by a model that never trained on it)", seed)
        mean, sd = cv.get("mean") or {}, cv.get("sd") or {}
        names = [n for n in _headline_names(cv.get("pooled") or {}) if n in mean]
        if names:
            out += ["", "Across the folds (mean ± sample standard deviation): " + "; ".join(
                f"{n.replace('_', ' ')} {_number(mean[n])} ± {_number(sd.get(n))}" for n in names) + "."]
        out += ["", "The delivered model was trained afterwards on every cross-validated row; these numbers "
                "estimate it, they were not measured on it."]
    test = metrics.get("test")
    if test and test.get("n"):
        if cv:
            out.append("")
        threshold = " or the decision threshold" if summary.get("task") == "binary" else ""
        out += _metric_lines(test, "the held-out test rows, used neither for training nor to choose the kept epoch"
                             + threshold, seed)
    elif not cv:
        out.append("No test rows: the model has no held-out measurement.")
    return out + [""]


def _part_counts(summary: dict) -> tuple[dict, dict]:
    """({part: {class: rows}}, {part: rows}): the parts are the splits, or a cross-validation's folds
    (each fold's predicted rows) and its test rows, if any."""
    dataset = summary.get("dataset") or {}
    per_class = dataset.get("class_counts") or {}
    if summary.get("task") != "regression" and per_class:
        return per_class, {part: sum(counts.values()) for part, counts in per_class.items()}
    cv = summary.get("cross_validation")
    if cv:
        totals = {f"fold {f.get('fold')}": f.get("predicted") for f in cv.get("fold_sizes") or []}
        test = (dataset.get("split_counts") or {}).get("test")
        return {}, {**totals, **({"test": test} if test else {})}
    return {}, dict(dataset.get("split_counts") or {})


def _counts_table(summary: dict) -> list[str]:
    per_class, totals = _part_counts(summary)
    parts = list(totals)
    rows = ["| " + " | ".join(["class", *map(md_text, parts)]) + " |", "|" + "---|" * (len(parts) + 1)]
    for cls in (summary.get("classes") or []) if per_class else []:
        rows.append("| " + " | ".join([md_text(cls), *(str(per_class[p].get(cls, 0)) for p in parts)]) + " |")
    rows.append("| " + " | ".join(["all", *(str(totals[p]) for p in parts)]) + " |")
    return rows


def _data_section(summary: dict, licence: str) -> list[str]:
    dataset, inputs = summary.get("dataset") or {}, summary.get("inputs") or {}
    target = summary.get("target_column")
    kind = ("a number (regression)" if summary.get("task") == "regression"
            else f"{len(summary.get('classes') or [])} classes ({summary.get('task')})")
    out = ["## Data", "",
           f"- Images: {dataset.get('matched_rows', 'n/a')} used, from image ZIP {md_text(inputs.get('image_zip'))} "
           f"and table {md_text(inputs.get('csv_file'))}",
           f"- Target: column {md_text(target)}, {kind}; {md_text(summary.get('task_reason', ''))}"]
    scaling = summary.get("target_scaling")
    if scaling:
        out.append(f"- Target scaling (training rows): mean {_number(scaling['mean'])}, sd {_number(scaling['std'])}")
    out += [f"- Licence of the data, as the user stated it: {md_text(licence)}", "",
            "Rows per split" + (" (cross-validation: per fold, the rows it predicted)"
                                if summary.get("cross_validation") else "") + ":", "",
            *_counts_table(summary), ""]
    return out


def _split_section(summary: dict) -> list[str]:
    split, leakage = summary.get("split") or {}, summary.get("leakage") or {}
    sample_id = (summary.get("columns") or {}).get("sample_id")
    grouped = ", ".join(md_text(g) for g in split.get("grouped_by") or []) or "nothing (each image on its own)"
    out = ["## Split and groups", "",
           f"- Method: {md_text(split.get('method', 'n/a'))}; seed {split.get('seed')}",
           f"- Images kept together in one split, grouped by: {grouped}",
           f"- Sample id column: {md_text(sample_id) if sample_id else 'none given'}"]
    if leakage.get("guard"):
        out.append(f"- Leakage guard: on (perceptual hashes, flips and rotations, Hamming distance up to "
                   f"{leakage.get('max_distance')}); {leakage.get('duplicate_groups', 0)} duplicate groups holding "
                   f"{leakage.get('images_in_duplicate_groups', 0)} images")
    else:
        out.append("- Leakage guard: off (near-duplicate images may sit on both sides of the split)")
    cv = summary.get("cross_validation")
    if cv:
        folds = "; ".join(f"fold {f.get('fold')}: {f.get('train')} train, {f.get('validation')} validation, "
                          f"{f.get('predicted')} predicted" for f in cv.get("fold_sizes") or [])
        out.append(f"- Cross-validation: {cv.get('k')} folds ({folds}); kept epochs "
                   f"{', '.join(map(str, cv.get('kept_epochs') or []))}; final model trained for "
                   f"{cv.get('final_epochs')} epochs ({cv.get('final_epochs_rule')}) on "
                   f"{cv.get('final_training_rows')} rows")
    return out + [""]


_OPTION_LABELS = (("epochs", "epochs (most)"), ("epochs_run", "epochs run"), ("best_epoch", "kept epoch"),
                  ("best_epoch_chosen_by", "kept epoch chosen by"), ("early_stop", "early stop (epochs)"),
                  ("batch_size", "batch size"), ("learning_rate", "learning rate"), ("lr_schedule", "schedule"),
                  ("augmentation", "augmentation"), ("class_weights", "class weights"),
                  ("class_decision", "decision (multiclass)"),
                  ("random_seed", "random seed"), ("device", "device"), ("mixed_precision", "mixed precision"))


def _model_section(summary: dict, onnx: dict | None) -> list[str]:
    model, training = summary.get("model") or {}, summary.get("training") or {}
    side = model.get("image_size")
    out = ["## Model", "",
           f"- Backbone: timm {md_text(model.get('name'))}, input {side}×{side} RGB, "
           f"{'fine-tuned' if model.get('fine_tune', True) else 'frozen (only the head trained)'}",
           f"- Weights' origin before training: {md_text(model.get('weights_source', 'n/a'))}",
           f"- Files: model_weights.safetensors with Ludwig {md_text((summary.get('versions') or {}).get('ludwig'))}"
           f"'s config (predict with Image Learner {md_text((summary.get('tool') or {}).get('version'))})"
           + (f"; model.onnx ({onnx['description']})" if onnx else "")]
    ensemble = (summary.get("cross_validation") or {}).get("ensemble")
    if ensemble:  # --ensemble folds / folds+refit: predict averages these networks (fold_<k>_weights.safetensors)
        from image_learner.model import fold_ensemble

        out.append(f"- Predictions: {md_text(fold_ensemble.describe(ensemble))} (files fold_1_weights.safetensors "
                   f"to fold_{ensemble['k']}_weights.safetensors)")
    if summary.get("search"):  # --search: the settings were chosen on the non-test rows (training/search.py)
        out.append(f"- Settings: {md_text(summary['search']['description'])}")
    if model.get("tabular_description"):  # --tabular-columns: predict needs these columns in its CSV
        out.append(f"- Model inputs: {md_text(model['tabular_description'])}; predict needs these columns in its CSV")
    if summary.get("task") != "regression":
        out.append("- Classes, in the order of the probability columns: "
                   + ", ".join(md_text(c) for c in summary.get("classes") or []))
    if summary.get("threshold") is not None:
        out.append(f"- Decision threshold on P({md_text(summary.get('positive_label'))}): "
                   f"{_number(summary['threshold'])}, {md_text(summary.get('threshold_policy') or '')}")
    out += ["", "Training options:", "", "| option | value |", "|---|---|"]
    for key, label in _OPTION_LABELS:
        if key in training:
            value = training[key]
            value = ", ".join(value) or "none" if isinstance(value, list) else value
            out.append(f"| {label} | {md_text(value)} |")
    if training.get("validation_metric"):
        out.append(f"| validation metric | {md_text(training['validation_metric'])} |")
    return out + [""]


def _use_section(summary: dict) -> list[str]:
    cv = summary.get("cross_validation")
    rows = cv.get("final_training_rows") if cv else (summary.get("dataset") or {}).get("split_counts", {}).get("train")
    return ["## Intended use and limits", "",
            "- For research and teaching only. This model is not a medical device and was not validated for "
            "diagnosis, screening or any clinical decision.",
            f"- It learned from {rows} images of one collection (the data above). The numbers above hold for "
            "images like those (the same population, sites, devices and acquisition); on other populations, "
            "cameras or classes it never saw, expect it to do worse, by an unknown amount.",
            "- It always answers with one of its classes (or a number): it cannot say that an image is "
            "outside what it knows.",
            "- Small test sets give wide intervals: read the interval, not the point estimate.",
            ""]


def build_card(summary: dict, licence: str = NOT_STATED, onnx: dict | None = None) -> str:
    """The Markdown text of MODEL_CARD.md for one training run. ``summary``: run_summary.json's content
    (metrics included); ``licence``: the data's licence as the user stated it; ``onnx``: with
    --export-onnx, {"description": the ONNX file's input and output, in words}."""
    model, task = summary.get("model") or {}, summary.get("task", "n/a")
    title = f"# Model card: {md_text(model.get('name'))}, {task} image model"
    intro = ("Written by Image Learner at the end of training; every fact below comes from the same run's "
             "run_summary.json and metrics.json.")
    lines = [title, "", intro, "", *_model_section(summary, onnx), *_data_section(summary, licence),
             *_split_section(summary), *_metrics_section(summary), *_use_section(summary)]
    return "\n".join(lines)
