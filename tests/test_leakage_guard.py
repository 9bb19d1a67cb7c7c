"""Leakage guard on real HAM10000 images: copies up to flips/rotations are grouped, distinct lesions are not,
and a picture and its copy always land in the same split. Flat and low-texture images are grouped only when
their colours match too; the Hamming index finds exactly the pairs that comparing all pairs finds."""

import io
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from image_learner.data import dataset_prep
from conftest import DEMO_CSV, DEMO_ZIP, TEST_DATA
from image_learner.data.input_utils import extract_zip_safely
from image_learner.errors import InputError
from image_learner.data.leakage_guard import duplicate_groups, hash_pairs, image_hashes, image_thumbnail, min_distances


@pytest.fixture(scope="module")
def originals():
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith("_orig.jpg"))
        return [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in names]


def _recompressed(img, fmt="JPEG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


COPIES = {
    "horizontal flip": ImageOps.mirror,
    "vertical flip": ImageOps.flip,
    "rotation 90": lambda im: im.rotate(90),
    "rotation 270 + flip": lambda im: ImageOps.mirror(im.rotate(270)),
    "upscaled + JPEG": lambda im: _recompressed(im.resize((150, 150), Image.Resampling.BICUBIC)),
    "downscaled + flip + PNG": lambda im: _recompressed(ImageOps.mirror(im.resize((40, 40))), "PNG"),
}


def _groups(images, **options):
    return duplicate_groups(np.array([image_hashes(img) for img in images]),
                            np.array([image_thumbnail(img) for img in images]), **options)


@pytest.mark.parametrize("kind", COPIES)
def test_copies_join_their_original_and_nothing_else(originals, kind):
    copies = [COPIES[kind](img) for img in originals]
    groups = _groups(originals + copies)
    n = len(originals)
    assert all(groups[i] == groups[n + i] for i in range(n)), kind
    assert len(set(groups[:n])) == n  # distinct lesions stay distinct


def test_distinct_real_lesions_are_far_apart(originals):
    dist = min_distances(np.array([image_hashes(img) for img in originals])).astype(int)
    np.fill_diagonal(dist, 10_000)
    assert dist.min() > 20


def _prepare(tmp_path, guard: bool, csv=DEMO_CSV, **options):
    images = str(tmp_path / "images")
    files = extract_zip_safely(DEMO_ZIP, images)
    return dataset_prep.prepare(csv, images, files, dataset_prep.DataOptions(leakage_guard=guard, **options))


def test_flip_pairs_always_share_a_split_with_the_guard(tmp_path):
    for seed in (1, 2, 3):
        data = _prepare(tmp_path / str(seed), guard=True, random_seed=seed)
        assert data.leakage["duplicate_groups"] == 70
        pairs = data.table.assign(pic=data.table["image"].str.replace(r"_(orig|flip)\.jpg$", "", regex=True))
        assert pairs.groupby("pic")["split"].nunique().max() == 1
        assert data.leakage["straddling_groups"] == 0


def test_without_the_guard_the_leak_is_reported_loudly(tmp_path):
    data = _prepare(tmp_path, guard=False)
    assert data.leakage["duplicate_groups"] == 70  # still found, only not used for the split
    assert data.leakage["straddling_groups"] > 0
    assert any(w.startswith("LEAKAGE") for w in data.warnings)


def test_user_split_column_that_leaks_is_kept_but_reported(tmp_path):
    table = pd.read_csv(DEMO_CSV)
    table["split"] = np.where(table["image_path"].str.endswith("_flip.jpg"), "test", "train")
    csv = tmp_path / "leaky.csv"
    table.to_csv(csv, index=False)
    data = _prepare(tmp_path, guard=True, csv=str(csv))
    assert (data.table["split"] == 2).sum() == 70  # the user's test rows are kept as given
    assert data.leakage["straddling_groups"] == 70
    assert any("LEAKAGE" in w for w in data.warnings)
    assert "validation carved out" in data.split["method"]


def test_sample_id_groups_hold_when_validation_is_carved(tmp_path):
    data = _prepare(tmp_path, guard=False, sample_id_column="lesion_id",
                    csv=os.path.join(TEST_DATA, "ham10000_demo_split_column.csv"))
    assert set(data.table["split"]) == {0, 1, 2}
    assert data.table.groupby("sample_id")["split"].nunique().max() == 1


# Flat and low-texture pictures: the DCT hash of every uniform image is all zeros (and every plain gradient
# of one direction hashes alike), so only their colours can tell them apart.
PALETTE = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
           (0, 255, 255), (128, 128, 128), (140, 140, 140), (200, 100, 50), (10, 200, 180), (90, 60, 30),
           (240, 200, 200)]


def _noisy(pixels, seed, sd=0.3):
    """``pixels`` plus faint noise (invisible, and gone once the hash reduces the image to 64x64)."""
    noise = np.random.default_rng(seed).normal(0.0, sd, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


def _gradient(start, end, vertical, size=(240, 160)):
    ramp = np.linspace(0.0, 1.0, size[1] if vertical else size[0])
    ramp = ramp[:, None, None] if vertical else ramp[None, :, None]
    pixels = np.array(start, float) * (1 - ramp) + np.array(end, float) * ramp
    return np.broadcast_to(pixels, (size[1], size[0], 3))


def test_distinct_solid_colours_stay_apart_and_their_copies_join_them():
    solids = [Image.new("RGB", (300, 200), colour) for colour in PALETTE]
    copies = [_recompressed(img) for img in solids] + [img.resize((64, 43)) for img in solids]
    groups = _groups(solids + copies)
    n = len(PALETTE)
    assert len(set(groups[:n])) == n
    assert all(groups[i] == groups[n + i] == groups[2 * n + i] for i in range(n))


GRADIENTS = [(PALETTE[a], PALETTE[b]) for a, b in [(0, 1), (2, 4), (3, 5), (6, 7), (8, 11), (10, 12), (13, 0), (1, 2),
                                                   (4, 9), (5, 10), (7, 12), (11, 13)]]


def test_distinct_near_uniform_textures_and_gradients_stay_apart():
    near_uniform = [_noisy(np.full((200, 300, 3), colour, float), seed) for seed, colour in enumerate(PALETTE)]
    assert len(set(_groups(near_uniform))) == len(near_uniform)
    for noise in (0.0, 0.3):  # plain gradients all hash alike; faint noise does not change that
        gradients = [_noisy(_gradient(a, b, vertical=k % 2 == 1), 100 + k, noise) for k, (a, b) in enumerate(GRADIENTS)]
        assert len(set(_groups(gradients))) == len(gradients), noise


def test_a_gradient_mirrored_re_encoded_or_resized_is_still_the_same_picture():
    gradients = [Image.fromarray(_gradient(a, b, vertical=k % 2 == 1).round().astype(np.uint8))
                 for k, (a, b) in enumerate(GRADIENTS)]
    copies = [_recompressed(ImageOps.mirror(img)) for img in gradients] + [img.resize((120, 80)) for img in gradients]
    groups = _groups(gradients + copies)
    n = len(gradients)
    assert len(set(groups[:n])) == n
    assert all(groups[i] == groups[n + i] == groups[2 * n + i] for i in range(n))


def test_solid_colour_data_set_is_split_not_sent_to_train_whole(tmp_path):
    """Through the whole preparation: 14 solid colours, each with a JPEG copy, are 14 groups of two."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for k, colour in enumerate(PALETTE):
        Image.new("RGB", (120, 90), colour).save(images / f"c{k}.png")
        Image.new("RGB", (120, 90), colour).save(images / f"c{k}_copy.jpg", quality=80)
        rows += [{"image_path": name, "label": "ab"[k % 2]} for name in (f"c{k}.png", f"c{k}_copy.jpg")]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    files = sorted(os.listdir(images))
    data = dataset_prep.prepare(str(tmp_path / "meta.csv"), str(images), files, dataset_prep.DataOptions())
    assert data.leakage["duplicate_groups"] == len(PALETTE)
    assert data.leakage["images_in_duplicate_groups"] == 2 * len(PALETTE)
    assert set(data.table["split"]) == {0, 1, 2}
    assert data.table.groupby(data.table["image"].str[:3].str.rstrip("._"))["split"].nunique().max() == 1


@pytest.mark.parametrize("value", [-1, 41, 256])
def test_max_distance_the_guard_cannot_stand_behind_is_refused(tmp_path, value):
    with pytest.raises(InputError, match="--leakage-max-distance must be between 0 and 40"):
        _prepare(tmp_path, guard=True, leakage_max_distance=value)


def test_index_finds_the_same_pairs_as_comparing_all_pairs():
    """Random 256-bit hashes (8 per image, as the guard stores them) with planted near copies: image b's
    identity hash is symmetry s of image a's at 0..45 flipped bits; the index must return exactly the
    pairs within the radius that the brute-force matrix has, for the default radius and others."""
    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 2**64, size=(700, 8, 4), dtype=np.uint64, endpoint=False)
    for b in range(350, 700):
        a, s, flips = rng.integers(0, 350), rng.integers(0, 8), rng.choice(256, rng.integers(0, 46), replace=False)
        hashes[b, 0] = hashes[a, s]
        for bit in flips:
            hashes[b, 0, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    hashes[690:] = hashes[689]  # identical images (a flat or repeated picture) too
    dist = min_distances(hashes).astype(int)
    dist = np.minimum(dist, dist.T)  # a pair counts when either image is close to a symmetry of the other
    for radius in (0, 7, 20, 21, 33, 40):
        i, j = hash_pairs(hashes, radius)
        assert (i < j).all()
        expected = np.nonzero(np.triu(dist <= radius, 1))
        assert set(zip(i.tolist(), j.tolist())) == set(zip(expected[0].tolist(), expected[1].tolist()))


def test_empty_and_tiny_sets():
    for n in (0, 1, 2):
        groups = duplicate_groups(np.zeros((n, 8, 4), np.uint64), np.zeros((n, 8, 8, 3), np.uint8))
        assert groups.tolist() == [0] * n  # two identical flat black images are one picture


def _reference_hashes(image):
    """The hash as first written (one variant, one median at a time): the vectorised one must equal it."""
    from scipy.fft import dctn

    from image_learner.data import leakage_guard

    grey = image.convert("L").resize((leakage_guard.HASH_SIDE,) * 2, Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:leakage_guard.BLOCK, :leakage_guard.BLOCK]
    u, v = np.arange(coeffs.shape[0])[:, None], np.arange(coeffs.shape[1])[None, :]
    bits = []
    for base in (coeffs, coeffs.T):
        for sign in (1.0, (-1.0) ** v, (-1.0) ** u, (-1.0) ** v * (-1.0) ** u):
            flat = (base * sign).ravel().copy()
            flat[0] = 0.0
            flat[np.abs(flat) < leakage_guard.NOISE_FLOOR] = 0.0
            bits.append(flat > np.median(flat))
    return np.packbits(np.array(bits), axis=1).view(np.uint64)


def test_hashes_equal_the_one_variant_at_a_time_reference(originals):
    """All 8 symmetric hashes at once give the same bits as computing each variant on its own (also checked
    on all 7,347 + 258 shared HAM10000 images: BENCHMARKS.md, issue 22), flips included."""
    images = originals + [ImageOps.mirror(originals[0]), originals[1].rotate(90), Image.new("RGB", (40, 30))]
    for img in images:
        np.testing.assert_array_equal(image_hashes(img), _reference_hashes(img))
