"""Leakage guard: find images that are the same picture up to a flip or a 90° rotation.

An image and its mirrored copy in different splits let a model be tested on what it was trained on
(the Galaxy tutorial's HAM10000 set has exactly that). We hash every image with a DCT perceptual hash
under all 8 symmetries of the square, so a flipped, rotated, resized or recompressed copy lands within
a small Hamming distance of the original. The hash ignores brightness and colour, and every flat image
(and every plain gradient of one direction) gets the same hash, so each image also keeps an 8x8 RGB
thumbnail: a pair is "the same picture" only when the hashes are close *and* the thumbnails match in
colour and brightness. Close hashes are found with an exact multi-index Hamming search
(hamming_index.py), not by comparing all pairs; groups are then the connected components, and the
splitter keeps each group together.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

from image_learner.data.hamming_index import radius_pairs, sorted_unique
from image_learner.errors import InputError

HASH_SIDE = 64  # images are reduced to 64x64 grey before the DCT
BLOCK = 16  # low-frequency 16x16 block -> 256-bit hash, stored as 4 uint64 words
WORDS = BLOCK * BLOCK // 64
# DCT coefficients (orthonormal, grey levels 0-255 at 64x64) below this are noise: a visible pattern of
# amplitude 1 grey level gives about 32, 8-bit rounding noise about 0.3.
NOISE_FLOOR = 1.0
# Largest Hamming distance (of 256 bits) still called "the same picture". Measured on the 258 shared
# HAM10000 originals (bench/leakage_threshold.py): copies flipped, rotated, resized to 96 px and
# re-encoded (PNG or JPEG q75) sit at 0-14; distinct lesions at 55 and more (the only closer pairs, 28
# and 35, are re-photographs of one lesion). 20 leaves a margin on both sides.
DEFAULT_MAX_DISTANCE = 20
# Above this the threshold nears distinct photographs (distinct HAM10000 lesions: 55 bits and more, two
# re-photographs of one lesion 28 and 35) and the index's candidate lists grow towards all pairs.
MAX_DISTANCE_LIMIT = 40
THUMB_SIDE = 8  # colour signature: 8x8 RGB box-filtered thumbnail (192 bytes)
# Largest mean absolute difference (0-255 levels, over the 8x8x3 thumbnail, best of the 8 symmetries)
# still called the same colours. The HAM10000 copies of bench/leakage_threshold.py: at most 0.72; a flat
# colour re-encoded as JPEG q30: at most 1.7; brightness x1.05: about 9 (no longer the same picture).
COLOUR_TOLERANCE = 8.0


def _symmetry_signs(side: int) -> np.ndarray:
    """(4, side, side) sign patterns: identity, horizontal flip, vertical flip, both."""
    sign_h = np.broadcast_to((-1.0) ** np.arange(side)[None, :], (side, side))
    sign_v = np.broadcast_to((-1.0) ** np.arange(side)[:, None], (side, side))
    return np.stack([np.ones((side, side)), sign_h, sign_v, sign_h * sign_v])


_SIGNS = _symmetry_signs(BLOCK)


def _symmetries(block: np.ndarray) -> np.ndarray:
    """The 8 dihedral variants of a BLOCK x BLOCK DCT block, (8, BLOCK, BLOCK), derived from coefficient signs and a transpose.

    A horizontal flip of an image multiplies DCT coefficient (u, v) by (-1)^v, a vertical one by
    (-1)^u, and a transpose transposes the block, so no image has to be re-hashed. Order: the block
    times each of the 4 sign patterns, then its transpose likewise (``thumbnail_symmetry`` numbers them so).
    """
    return (np.stack([block, block.T])[:, None] * _SIGNS[None]).reshape(8, *block.shape)


def image_hashes(image: Image.Image) -> np.ndarray:
    """Return the 8 symmetric hashes of ``image``: uint64 array of shape (8, WORDS), identity first."""
    grey = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:BLOCK, :BLOCK]
    # All 8 variants at once (one median call instead of 8: a third of the hash's CPU time, same bits)
    flat = _symmetries(coeffs).reshape(8, BLOCK * BLOCK)
    flat[:, 0] = 0.0  # the DC term is brightness, not structure
    # Coefficients within the noise floor carry no structure, only rounding and noise: zeroed, so
    # a flat image or a plain gradient gets the same hash however it was re-encoded or resized.
    flat[np.abs(flat) < NOISE_FLOOR] = 0.0
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(np.uint64)


def image_thumbnail(image: Image.Image) -> np.ndarray:
    """The colour signature of ``image``: THUMB_SIDE x THUMB_SIDE x 3 uint8 box-filtered RGB."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def thumbnail_symmetry(thumbs: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` (numbered as in ``_symmetries``) applied to (..., H, W, 3) thumbnails: the
    thumbnail of the image whose identity hash is hash ``k`` of the original."""
    transpose, flips = divmod(k, 4)
    if transpose:
        thumbs = np.swapaxes(thumbs, -3, -2)
    if flips in (1, 3):
        thumbs = thumbs[..., :, ::-1, :]
    if flips in (2, 3):
        thumbs = thumbs[..., ::-1, :, :]
    return thumbs


def colour_distances(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 65536,
                     tolerance: float = np.inf) -> np.ndarray:
    """Mean absolute difference (0-255) between the thumbnails of images i[p] and j[p], the smallest
    over the 8 symmetries of j's (the hash already matched the structure).

    Pairs whose mean colours alone differ by more than ``tolerance`` (a lower bound of the distance
    under any symmetry) get that bound instead: enough to reject them, without the 8 comparisons."""
    means = thumbs.mean(axis=(1, 2), dtype=np.float32)
    out = np.abs(means[i] - means[j]).mean(axis=1)
    todo = np.flatnonzero(out <= tolerance)
    for start in range(0, len(todo), batch):
        rows = todo[start:start + batch]
        a = thumbs[i[rows]].astype(np.int16)
        b = thumbs[j[rows]].astype(np.int16)
        out[rows] = np.min([np.abs(a - thumbnail_symmetry(b, k)).mean(axis=(1, 2, 3), dtype=np.float32)
                            for k in range(8)], axis=0)
    return out


def check_max_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= MAX_DISTANCE_LIMIT:
        raise InputError(f"--leakage-max-distance must be between 0 and {MAX_DISTANCE_LIMIT} bits (of 256), got "
                         f"{max_distance}: distinct photographs sit about 55 bits apart or more, so a larger "
                         "value would group different pictures")


def _distance_rows(hashes: np.ndarray, chunk: int = 64):
    """Yield (start, block): block[i, j] is the smallest Hamming distance between image start+i and
    any of the 8 symmetries of image j. Chunks bound memory at chunk x N x 8 x WORDS words."""
    identity = hashes[:, 0, :]
    for start in range(0, len(hashes), chunk):
        xor = identity[start:start + chunk, None, None, :] ^ hashes[None, :, :, :]
        yield start, np.bitwise_count(xor).sum(axis=3, dtype=np.uint16).min(axis=2)


def min_distances(hashes: np.ndarray) -> np.ndarray:
    """N x N matrix of the smallest Hamming distance between image i and any symmetry of image j."""
    dist = np.empty((len(hashes), len(hashes)), dtype=np.uint16)
    for start, block in _distance_rows(hashes):
        dist[start:start + len(block)] = block
    return dist


def hash_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, where one image's identity hash is within ``max_distance`` of one of the
    8 symmetric hashes of the other: the pairs of ``min_distances(hashes) <= max_distance``, either way."""
    n = len(hashes)
    # A symmetric image (or a flat one) repeats hashes among its 8: index each distinct one once.
    rows = hashes.reshape(n * 8, WORDS)
    flat = np.ascontiguousarray(hashes).view(np.dtype((np.void, 8 * WORDS))).reshape(n, 8)
    repeated = np.zeros((n, 8), dtype=bool)
    for k in range(1, 8):
        repeated[:, k] = (flat[:, :k] == flat[:, k:k + 1]).any(axis=1)
    keep = np.flatnonzero(~repeated.ravel())
    i, found = radius_pairs(rows[keep], hashes[:, 0, :], max_distance)
    j = keep[found] // 8
    # One edge per unordered pair is enough for the groups (and the colour check is symmetric).
    pairs = sorted_unique(np.minimum(i, j) * n + np.maximum(i, j))
    i, j = pairs // n, pairs % n
    differ = i != j
    return i[differ], j[differ]


def duplicate_groups(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
                     colour_tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """Group ids (0..G-1, by first appearance): images whose hashes are within ``max_distance`` (under
    some flip/rotation) and whose thumbnails match within ``colour_tolerance`` share an id."""
    # Imported here: the image check's workers import this module for the hashes alone, and split_utils
    # brings pandas and scipy.sparse (~0.4 s of CPU in every worker; BENCHMARKS.md, issue 22)
    from split_utils import connected_groups

    check_max_distance(max_distance)
    i, j = hash_pairs(hashes, max_distance)
    same_colours = colour_distances(thumbs, i, j, tolerance=colour_tolerance) <= colour_tolerance
    return connected_groups(len(hashes), i[same_colours], j[same_colours])
