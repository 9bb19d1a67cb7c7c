"""Leakage guard: find images that are the same picture up to a flip or a 90° rotation.

An image and its mirrored copy in different splits let a model be tested on what it was trained on
(the Galaxy tutorial's HAM10000 set has exactly that). We hash every image with a DCT perceptual hash
under all 8 symmetries of the square, so a flipped, rotated, resized or recompressed copy lands within
a small Hamming distance of the original, then group such images with union-find. The groups are
kept together by the splitter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

from split_utils import connected_groups

HASH_SIDE = 64  # images are reduced to 64x64 grey before the DCT
BLOCK = 16  # low-frequency 16x16 block -> 256-bit hash, stored as 4 uint64 words
WORDS = BLOCK * BLOCK // 64
# Largest Hamming distance (of 256 bits) still called "the same picture". Measured on the 258 shared
# HAM10000 originals (bench/leakage_threshold.py): copies flipped, rotated, resized to 96 px and
# re-encoded (PNG or JPEG q75) sit at 0-14; distinct lesions at 45 and more (the only closer pairs, 26
# and 36, are re-photographs of one lesion). 20 leaves a margin on both sides.
DEFAULT_MAX_DISTANCE = 20


def _symmetries(block: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral variants of a DCT block, derived from coefficient signs and a transpose.

    A horizontal flip of an image multiplies DCT coefficient (u, v) by (-1)^v, a vertical one by
    (-1)^u, and a transpose transposes the block, so no image has to be re-hashed.
    """
    u = np.arange(block.shape[0])[:, None]
    v = np.arange(block.shape[1])[None, :]
    sign_h = (-1.0) ** v
    sign_v = (-1.0) ** u
    variants = []
    for base in (block, block.T):
        for sign in (1.0, sign_h, sign_v, sign_h * sign_v):
            variants.append(base * sign)
    return variants


def image_hashes(image: Image.Image) -> np.ndarray:
    """Return the 8 symmetric hashes of ``image``: uint64 array of shape (8, WORDS), identity first."""
    grey = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:BLOCK, :BLOCK]
    bits = np.empty((8, BLOCK * BLOCK), dtype=bool)
    for i, variant in enumerate(_symmetries(coeffs)):
        flat = variant.ravel().copy()
        flat[0] = 0.0  # the DC term is brightness, not structure
        bits[i] = flat > np.median(flat)
    return np.packbits(bits, axis=1).view(np.uint64)


def hash_files(paths: list[str]) -> np.ndarray:
    """Hash each file (N x 8 x WORDS uint64); unreadable images raise ``OSError`` naming the file."""
    out = np.empty((len(paths), 8, WORDS), dtype=np.uint64)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.draft("L", (HASH_SIDE * 2, HASH_SIDE * 2))  # JPEG: decode at reduced size, much faster
                out[i] = image_hashes(img)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise OSError(f"image {path!r} cannot be read: {err}") from err
    return out


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


def duplicate_groups(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """Group ids (0..G-1, by first appearance) so that near-duplicate images share an id."""
    rows, cols = [], []
    for start, block in _distance_rows(hashes):
        r, c = np.nonzero(block <= max_distance)
        rows.append(r + start)
        cols.append(c)
    return connected_groups(len(hashes), np.concatenate(rows or [[]]), np.concatenate(cols or [[]]))
