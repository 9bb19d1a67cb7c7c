"""Image health (issue 24): scores from the image check's one decode, data-set-relative flags, planted
defects found, --drop-unhealthy, duplicates straddling a user's split column."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from bench.image_health import assess, demo_originals, plant_defects, precision_recall
from image_learner.data import image_health, image_properties
import image_learner_cli
from conftest import TEST_DATA
from image_learner.errors import InputError


def test_planted_defects_are_found_with_precision_and_recall_of_at_least_0_9(tmp_path):
    """The closing note's measurement (bench/image_health.py quality, 1,000 HAM10000 images) on the demo's
    70 real pictures: 5 darkened, 5 blurred, 3 blanked, 5 near-duplicate pairs across the user's split."""
    pictures, labels = demo_originals()
    shares = {"dark": 5, "blur": 5, "blank": 3, "pair": 5}
    # blur: radius 3.2 px at 64 px (5% of the width). The bench's 1,000 images need only 2% (4 px at 200
    # px): 70 images give a wider yardstick than 1,000 (at 3% two of these five stay within it).
    csv_path, zip_path, truth = plant_defects(pictures, labels, str(tmp_path / "set"), shares, seed=3,
                                              blur_fraction=0.05)
    data = assess(csv_path, zip_path, str(tmp_path / "work"))
    scores = precision_recall(data.health, truth)
    for issue, score in scores.items():
        assert score["precision"] >= 0.9 and score["recall"] >= 0.9, (issue, score)
    # nothing planted, nothing flagged: the clean pictures raise no other issue
    for issue in ("light", "odd_aspect_ratio", "odd_size", "grayscale", "exact_duplicates"):
        assert data.health_summary["counts"][issue] == 0, issue
    # every planted pair straddles the user's split (train / test): listed, and a LEAKAGE warning says so
    pairs = [g for g in data.leakage["straddling_duplicates"] if any(i.endswith("_copy.jpg") for i in g["images"])]
    assert len(pairs) == 5 and all(sorted(g["splits"]) == ["test", "train"] for g in pairs)
    assert any(w.startswith("LEAKAGE") and "straddle your split column 'split'" in w for w in data.warnings)
    assert len(data.table) == len(data.health)  # flags only: nothing removed without --drop-unhealthy


def _props(n, **changes):
    """n typical property rows (a varied but clean set), with some rows changed."""
    rng = np.random.default_rng(0)
    props = pd.DataFrame({"width": 600, "height": 450, "brightness_p99": rng.uniform(0.7, 0.95, n),
                          "brightness_p5": rng.uniform(0.2, 0.4, n), "entropy": rng.uniform(6, 7.5, n),
                          "sharpness": rng.uniform(0.04, 0.09, n), "colour_spread": rng.uniform(30, 60, n),
                          "pixel_digest": [f"d{i}" for i in range(n)]})
    for column, values in changes.items():
        for row, value in values.items():
            props.loc[row, column] = value
    return props


def test_a_clean_set_flags_nothing_however_its_scores_spread():
    """Not "the bottom 5%": a clean set's lowest scores are no outliers, so nothing is flagged."""
    table = image_health.health_table([f"i{k}" for k in range(200)], _props(200), np.arange(200))
    assert table["issues"].eq("").all()


def test_an_outlier_must_also_pass_the_absolute_bound():
    """A uniformly dark set (fluorescence, say) is not all dark; one far darker image in a bright set is,
    but a merely darker-than-usual one (an outlier still above cleanvision's bound 0.32) is not."""
    dark_set = _props(100, brightness_p99={k: 0.2 + 0.001 * k for k in range(100)})
    assert not image_health.health_table(range(100), dark_set, np.arange(100))["is_dark"].any()
    bright = _props(100, brightness_p99={0: 0.1, 1: 0.4})
    flags = image_health.health_table(range(100), bright, np.arange(100))["is_dark"]
    assert flags.tolist()[:2] == [True, False] and flags.sum() == 1


def test_size_shape_grey_and_duplicates():
    props = _props(60, width={0: 100, 1: 1200}, height={0: 75, 2: 150}, colour_spread={3: 0.5},
                   pixel_digest={4: "same", 5: "same"})
    groups = np.arange(60)
    groups[[5, 6]] = 5  # 4 and 5 identical pixels, 5 and 6 the same picture re-encoded
    groups[4] = 5
    table = image_health.health_table(range(60), props, groups)
    flagged = {issue: sorted(np.flatnonzero(table[f"is_{issue}"])) for issue in image_health.ISSUES}
    assert flagged["odd_size"] == [0]  # 4x smaller; 1200x450 is only 1.6x larger
    assert flagged["odd_aspect_ratio"] == [2]  # 600x150 = 4:1 in a 4:3 set (1200x450, 2.7:1, is not past 0.35)
    assert flagged["grayscale"] == [3]
    assert flagged["exact_duplicates"] == [4, 5] and flagged["near_duplicates"] == [4, 5, 6]
    # dropping duplicates keeps the first image of each group (the picture stays once)
    drop = image_health.rows_to_drop(table, ("near_duplicates",))
    assert sorted(np.flatnonzero(drop)) == [5, 6]


def test_properties_from_the_decoded_image():
    """The raw properties of known images: a flat grey image, a sharp checkerboard and its blurred copy."""
    flat = image_properties.image_properties(Image.new("RGB", (300, 200), (128, 128, 128)))
    # cleanvision entropy: Pillow's, over the 3 x 256-bin histogram: a flat colour is log2(3) bits, not 0
    assert flat["entropy"] == pytest.approx(np.log2(3)) and flat["colour_spread"] == 0.0 and flat["sharpness"] == 0.0
    assert flat["brightness_p5"] == pytest.approx(flat["brightness_p99"]) and flat["width"] == 300
    board = Image.fromarray((np.indices((128, 128)).sum(axis=0) // 8 % 2 * 255).astype(np.uint8)).convert("RGB")
    sharp = image_properties.image_properties(board)["sharpness"]
    blurred = image_properties.image_properties(board.filter(ImageFilter.GaussianBlur(3)))["sharpness"]
    assert sharp > 4 * blurred > 0


def test_laplacian_equals_scipys_to_the_last_bit():
    """The sharpness Laplacian written with slices equals scipy.ndimage.laplace's interior, and so does every
    statistic of it (same values, same layout)."""
    from scipy.ndimage import laplace

    rng = np.random.default_rng(0)
    for shape in [(3, 3), (75, 100), (128, 96)]:
        grey = rng.integers(0, 256, shape).astype(np.float32)
        ours, scipys = image_properties._laplacian(grey), laplace(grey)[1:-1, 1:-1]
        np.testing.assert_array_equal(ours, scipys)
        assert ours.std() == scipys.std() and ours.strides == scipys.strides


@pytest.mark.parametrize("text, expected", [("none", ()), ("", ()), ("dark, blurry", ("dark", "blurry")),
                                            ("all", image_health.ISSUES)])
def test_drop_option_parsing(text, expected):
    assert image_health.parse_drop_option(text) == expected


def test_drop_option_bad_name_names_the_option():
    with pytest.raises(InputError, match="--drop-unhealthy.*'blury'"):
        image_health.parse_drop_option("dark,blury")


HEALTH_CSV = os.path.join(TEST_DATA, "ham10000_health_metadata.csv")
HEALTH_ZIP = os.path.join(TEST_DATA, "ham10000_health_images.zip")
TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


def test_cli_bad_drop_unhealthy_exits_2_naming_the_option(tmp_path, capsys):
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", HEALTH_CSV, "--image-zip", HEALTH_ZIP, "--output-dir", str(out),
                                   *TINY, "--drop-unhealthy", "dark,too_dark"])
    err = capsys.readouterr().err
    assert code == 2 and "--drop-unhealthy: unknown issue name(s) 'too_dark'" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_cli_run_on_the_planted_fixture_flags_drops_and_reports(tmp_path, capsys):
    """The Galaxy test's fixture (bench/image_health.py fixture): 70 real pictures, 3 darkened, 3 blurred,
    2 blanked, 3 copies across the split column. Flags counted, named issues dropped before the split,
    every straddling pair in the log (LEAKAGE) and in the report with thumbnails."""
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", HEALTH_CSV, "--image-zip", HEALTH_ZIP, "--output-dir", str(out),
                                   *TINY, "--drop-unhealthy", "dark,low_information"])
    log = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "run_summary.json").read_text())
    health = summary["data_health"]
    assert health["images_checked"] == 73
    assert {k: health["counts"][k] for k in ("dark", "blurry", "low_information", "light", "grayscale")} == \
        {"dark": 3, "blurry": 3, "low_information": 2, "light": 0, "grayscale": 0}
    assert health["dropped"] == 5 and health["dropped_per_issue"] == {"dark": 3, "low_information": 2}
    assert summary["dataset"]["matched_rows"] == 68  # the 5 removed before the split, nothing else
    table = pd.read_csv(out / "data_health.csv")
    assert len(table) == 73 and (table["split"] == "dropped").sum() == 5
    assert set(table.loc[table["is_blurry"], "image"]) == {"images/ISIC_0024370_orig.jpg",
                                                            "images/ISIC_0029647_orig.jpg",
                                                            "images/ISIC_0031827_orig.jpg"}
    assert "--drop-unhealthy removed 5 of 73 images before the split (dark 3, low_information 2)" in log
    assert "LEAKAGE: 3 group(s) of duplicate pictures straddle your split column 'split'" in log
    assert len(summary["leakage"]["straddling_duplicates"]) == 3
    report = (out / "report.html").read_text()
    assert 'id="data-health"' in report and "Duplicate pictures across the splits: 3 group(s)" in report
    section = report[report.index('id="data-health"'):report.index("straddling-duplicates")]
    assert section.count("data:image/jpeg;base64") == 3 + 3 + 2 + health["counts"]["near_duplicates"]
    start = report.index('id="straddling-duplicates"')
    straddling = report[start:report.index("<h2", start)]  # up to the next section
    assert straddling.count("data:image/jpeg;base64") == 6 and straddling.count(" (test)") == 3


def test_report_section_without_the_images_counts_and_says_why(tmp_path):
    """A report rebuilt from a finished run's files: counts and worst-first order from data_health.csv,
    no thumbnails, and the reason said."""
    from image_learner.report import report_health

    props = _props(40, brightness_p99={0: 0.05, 1: 0.1})
    table = image_health.health_table([f"img{k}.png" for k in range(40)], props, np.arange(40))
    table.insert(1, "image_file", table["image"])
    table["dropped"] = False
    split = pd.DataFrame({"image": table["image"], "split": 0})
    image_health.write_csv(table, split, str(tmp_path / image_health.CSV_NAME))
    summary = {"data_health": image_health.summarise(table),
               "leakage": {"straddling_duplicates": [{"group": 3, "images": ["a.png", "b.png"],
                                                      "splits": ["train", "test"]}]}}
    section = report_health.health_section(str(tmp_path), summary, None)
    dark = next(i for i in section["issues"] if i["name"] == "dark")
    assert dark["count"] == 2 and [c["image"] for c in dark["cards"]] == ["img0.png", "img1.png"]
    assert all(c["src"] is None for c in dark["cards"]) and "not available" in section["pictures_reason"]
    assert section["straddling"][0]["members"] == [{"image": "a.png", "split": "train", "src": None},
                                                   {"image": "b.png", "split": "test", "src": None}]
