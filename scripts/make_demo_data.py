#!/usr/bin/env python3
"""Derive the bundled demo / test data from ../shared/data/ham10000 (run once; outputs are committed).

Tutorial-style: per class the first N distinct lesions (in labels.csv order), each image resized to
SIDE x SIDE, plus a horizontally flipped copy, as in the Galaxy tutorial's images_96.zip. Licence of
the result: CC BY-NC-SA 4.0 (see test-data/README.md).

    python scripts/make_demo_data.py [--per-class 10] [--side 64]
    python scripts/make_demo_data.py --age-csv   # only ham10000_demo_age.csv (each patient's age, from the metadata)
    python scripts/make_demo_data.py --model     # only tiny_model.zip and tiny_regression_model.zip
    python scripts/make_demo_data.py --lesions [--per-class 100] [--seed 21]
        # only the demo's lesion-grouped set (ham10000_lesions_*), from ham10000_200x150/
"""

import argparse
import io
import os
import zipfile

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "ham10000", "originals_600x450")
HAM_METADATA = os.path.join(HERE, "..", "..", "shared", "data", "ham10000", "HAM10000_metadata.csv")
HAM_200X150 = os.path.join(HERE, "..", "..", "shared", "data", "ham10000", "ham10000_200x150")
LESION_COLUMNS = ["image_path", "dx", "lesion_id", "image_id", "age", "sex", "localization"]
OUT = os.path.join(HERE, "..", "test-data")


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_zip(path: str, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # fixed date: reproducible bytes
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=None, help="lesions per class (default 10; --lesions: 100)")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--model", action="store_true",
                        help="only (re)build test-data/tiny_model.zip and tiny_regression_model.zip")
    parser.add_argument("--age-csv", action="store_true", help="only (re)build test-data/ham10000_demo_age.csv")
    parser.add_argument("--lesions", action="store_true",
                        help="only (re)build the demo's ham10000_lesions_images.zip and ham10000_lesions_metadata.csv "
                             "(--per-class lesions per class, default 100 here)")
    parser.add_argument("--seed", type=int, default=21, help="--lesions: seed of the lesion draw")
    args = parser.parse_args()
    if args.lesions:
        make_lesion_set(args.per_class or 100, args.seed)
        return
    if args.model:
        make_test_model()
        make_test_regression_model()
        return
    if args.age_csv:
        make_age_csv()
        return
    labels = pd.read_csv(os.path.join(SHARED, "labels.csv"))
    chosen = labels.drop_duplicates("lesion_id").groupby("dx", sort=True).head(args.per_class or 10)
    rows, members = [], {}
    for _, row in chosen.iterrows():
        img = Image.open(os.path.join(SHARED, row.image_path)).convert("RGB")
        small = img.resize((args.side, args.side), Image.Resampling.LANCZOS)
        for kind, picture in (("orig", small), ("flip", ImageOps.mirror(small))):
            name = f"images/{row.image_id}_{kind}.jpg"
            members[name] = jpeg_bytes(picture)
            rows.append({"image_path": name, "label": row.dx, "lesion_id": row.lesion_id,
                         "image_id": row.image_id})
    table = pd.DataFrame(rows)
    os.makedirs(OUT, exist_ok=True)
    write_zip(os.path.join(OUT, "ham10000_demo_images.zip"), members)
    table.to_csv(os.path.join(OUT, "ham10000_demo_metadata.csv"), index=False)
    # Two-class subset (melanoma vs nevus) of the same ZIP: the other images are simply unused.
    table[table.label.isin(["mel", "nv"])].to_csv(os.path.join(OUT, "ham10000_demo_binary.csv"), index=False)
    # A user split column (by lesion, so it does not leak), spelled as words.
    lesions = sorted(table.lesion_id.unique())
    split_of = {lesion: ("test" if i % 5 == 0 else "train") for i, lesion in enumerate(lesions)}
    table.assign(split=table.lesion_id.map(split_of)).to_csv(
        os.path.join(OUT, "ham10000_demo_split_column.csv"), index=False)
    print(f"{len(members)} images from {len(chosen)} lesions, {table.label.nunique()} classes")
    make_age_csv()


def choose_lesions(metadata: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """Every image of up to per_class lesions per class, the lesions drawn at random (seeded) from each
    class's sorted lesion ids: a lesion is never cut, so a split by lesion_id stays honest."""
    rng = np.random.default_rng(seed)
    chosen = []
    for dx in sorted(metadata.dx.unique()):
        lesions = np.array(sorted(metadata.loc[metadata.dx == dx, "lesion_id"].unique()))
        chosen.extend(rng.choice(lesions, size=min(per_class, len(lesions)), replace=False))
    return metadata[metadata.lesion_id.isin(set(chosen))].sort_values("image_id").reset_index(drop=True)


def make_lesion_set(per_class: int, seed: int) -> None:
    """test-data/ham10000_lesions_images.zip + ham10000_lesions_metadata.csv: the demo's data, a
    lesion-grouped subset of ham10000_200x150/ (the 200x150 JPEGs stored as they are, not re-encoded)."""
    metadata = pd.read_csv(os.path.join(HAM_200X150, "metadata.csv"))
    table = choose_lesions(metadata, per_class, seed)
    members = {}
    for path in table.image_path:
        with open(os.path.join(HAM_200X150, path), "rb") as handle:
            members[path] = handle.read()
    write_zip(os.path.join(OUT, "ham10000_lesions_images.zip"), members)
    table["age"] = table.age.astype("Int64")  # whole years (steps of 5); a few are unknown (empty)
    table[LESION_COLUMNS].to_csv(os.path.join(OUT, "ham10000_lesions_metadata.csv"), index=False)
    per = table.groupby("dx").agg(lesions=("lesion_id", "nunique"), images=("image_id", "size"))
    print(f"{len(table)} images of {table.lesion_id.nunique()} lesions (seed {seed}):")
    print(per.to_string())


def make_age_csv() -> None:
    """test-data/ham10000_demo_age.csv: the demo images with the patient's age (HAM10000 metadata, by
    image_id) as the target, for regression (age from the image)."""
    demo = pd.read_csv(os.path.join(OUT, "ham10000_demo_metadata.csv"))
    ages = pd.read_csv(HAM_METADATA, usecols=["image_id", "age"]).drop_duplicates("image_id")
    table = demo.merge(ages, on="image_id", how="left", validate="many_to_one")
    if table.age.isna().any():
        raise SystemExit(f"no age for {sorted(table.loc[table.age.isna(), 'image_id'])[:5]}")
    table["age"] = table.age.astype(int)  # HAM10000 gives ages in steps of 5 years, written as 55.0
    table[["image_path", "age", "lesion_id", "image_id"]].to_csv(os.path.join(OUT, "ham10000_demo_age.csv"),
                                                                 index=False)
    print(f"ages of {len(table)} images: {table.age.nunique()} distinct values, {table.age.min()}-{table.age.max()}")


def make_test_model(csv_name: str = "ham10000_demo_metadata.csv", zip_name: str = "tiny_model.zip",
                    extra: tuple = ()) -> None:
    """test-data/tiny_model.zip: timm's tiny test_efficientnet trained 1 epoch at 32 px on the demo set,
    for the predict tool's tests (regenerate when the Ludwig version or the model manifest changes); with
    other arguments the same for another table (the regression model)."""
    import shutil
    import sys
    import tempfile

    sys.path.insert(0, os.path.join(HERE, ".."))
    import image_learner_cli

    with tempfile.TemporaryDirectory() as tmp:
        code = image_learner_cli.main([
            "--csv-file", os.path.join(OUT, csv_name), *extra,
            "--image-zip", os.path.join(OUT, "ham10000_demo_images.zip"), "--output-dir", tmp + "/run",
            "--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
            "--batch-size", "16", "--no-report"])
        if code:
            sys.exit(code)
        shutil.copy(os.path.join(tmp, "run", "trained_model.zip"), os.path.join(OUT, zip_name))


def make_test_regression_model() -> None:
    """test-data/tiny_regression_model.zip: the same tiny backbone predicting age (ham10000_demo_age.csv),
    grouped by lesion, for the predict tool's regression tests."""
    make_test_model("ham10000_demo_age.csv", "tiny_regression_model.zip",
                    ("--target-column", "age", "--task", "regression", "--sample-id-column", "lesion_id"))


if __name__ == "__main__":
    main()
