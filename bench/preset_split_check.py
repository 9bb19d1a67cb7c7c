#!/usr/bin/env python3
"""Does ``--preset best`` make the split and folds of an earlier run that typed the recipe with a split column?

Builds the training request from a command line (the tool's own parser and run_request.from_args: the preset's
options filled in), unpacks the ZIP and prepares the data exactly as a run does (dataset_prep.prepare: image
check, groups, the split), without training; then compares every image's split and fold with a reference
run's ``split.csv``. Prints the counts that agree and the first rows that do not; exit 1 on any difference.

    python bench/preset_split_check.py --reference RUN/split.csv -- --csv-file CSV --image-zip ZIP \\
        --sample-id-column lesion_id --preset best --image-size 160
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import image_learner_cli  # noqa: E402
import split_utils  # noqa: E402
from image_learner import run_request  # noqa: E402
from image_learner.data import dataset_prep  # noqa: E402
from image_learner.data.input_utils import extract_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("--reference", required=True, help="an earlier run's split.csv")
    parser.add_argument("tool_args", nargs=argparse.REMAINDER, help="the training command line after --")
    a = parser.parse_args()
    cli = [x for x in a.tool_args if x != "--"]
    args = image_learner_cli.build_parser().parse_args([*cli, "--output-dir", "unused"])
    request = run_request.from_args(args)
    print(f"preset {request.preset[0]}: cross_validation {request.data.cross_validation}, hold_out_test "
          f"{request.data.hold_out_test}; image size {request.training.image_size}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        images = os.path.join(work, "images")
        unpacked = extract_images(request.image_zip, images, request.zip_limits)
        data = dataset_prep.prepare(request.csv_file, images, unpacked.files, request.data,
                                    converted_dir=os.path.join(work, "converted"),
                                    resize_to=request.training.image_size, skipped_files=unpacked.skipped)
    table = data.table
    ours = pd.DataFrame({"image": table["image"].astype(str).to_numpy(),
                         "split": [split_utils.SPLIT_NAMES[c] for c in table["split"]],
                         "fold": table["fold"].to_numpy() if "fold" in table else 0})
    reference = pd.read_csv(a.reference, dtype={"image": str})[["image", "split", "fold"]]
    both = ours.merge(reference, on="image", how="outer", suffixes=("_preset", "_reference"), indicator=True)
    matched = both["_merge"] == "both"
    same_split = matched & (both["split_preset"] == both["split_reference"])
    same_fold = matched & (both["fold_preset"] == both["fold_reference"])
    print(f"split method: {data.split['method']}")
    print(f"images: {len(ours)} here, {len(reference)} in the reference, {int(matched.sum())} in both; same split "
          f"{int(same_split.sum())}, same fold {int(same_fold.sum())}; test rows here "
          f"{int((ours.split == 'test').sum())}, in the reference {int((reference.split == 'test').sum())}")
    differ = both[~(same_split & same_fold)]
    if len(differ):
        print(differ.head(10).to_string())
        sys.exit(1)
    print("identical: every image has the reference run's split and fold")


if __name__ == "__main__":
    main()
