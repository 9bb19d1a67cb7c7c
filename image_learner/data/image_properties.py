"""The raw health properties of one decoded image, computed in the image check's workers (image_check.py).

Kept apart from image_health.py (the data-set flags, with pandas) so that a spawned worker imports only
numpy and Pillow for them (a worker's imports: 0.63 -> 0.35 CPU s; the whole check's time did not move
measurably: BENCHMARKS.md, issue 22). The definitions follow cleanvision 0.3.7: image_health.py says how.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

STATS_SIDE = 64  # brightness/entropy/colour statistics on a box-reduced copy of at most this side
# sharpness needs more detail: a 4 px blur of a 200 px image is 1 px at 64 px (recall 0.46 there, 1.00 at 128)
SHARPNESS_SIDE = 128


def _brightness(rgb: np.ndarray) -> np.ndarray:
    """cleanvision's perceived brightness of each pixel, 0-1."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    return np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255.0


def _percentiles(values: np.ndarray, quantiles) -> list[float]:
    """Percentiles of values in [0, 1] to 1/1024 (a histogram instead of a sort: a quarter of the cost)."""
    counts = np.bincount(np.minimum((values.ravel() * 1024).astype(np.int32), 1023), minlength=1024)
    cumulative = np.cumsum(counts) / values.size
    return [float((np.searchsorted(cumulative, q) + 0.5) / 1024) for q in quantiles]


def _reduced(img: Image.Image, side: int) -> Image.Image:
    """A box-filtered copy no larger than ``side`` (integer reduction: cheap, every pixel counted)."""
    factor = math.ceil(max(img.size) / side)
    return img.reduce(factor) if factor > 1 else img


def _laplacian(grey: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of a float32 image's interior: scipy.ndimage.laplace's values there (integer
    grey levels sum exactly in float32) without scipy.ndimage in the workers, laid out as its ``[1:-1, 1:-1]`` view so
    every statistic of it is the same to the last bit (tests/test_image_health.py)."""
    out = np.zeros_like(grey)
    out[1:-1, 1:-1] = ((grey[:-2, 1:-1] - 2 * grey[1:-1, 1:-1] + grey[2:, 1:-1])
                       + (grey[1:-1, :-2] - 2 * grey[1:-1, 1:-1] + grey[1:-1, 2:]))
    return out[1:-1, 1:-1]


def image_properties(img: Image.Image) -> dict:
    """Raw health properties of one decoded 8-bit RGB image (what the image check decoded; no file read)."""
    width, height = img.size
    detail = _reduced(img, SHARPNESS_SIDE)
    small = _reduced(detail, STATS_SIDE)  # from the larger copy: one more cheap box reduction
    arr = np.asarray(small)
    p5, p99 = _percentiles(_brightness(arr), (0.05, 0.99))
    grey = np.asarray(detail.convert("L"), dtype=np.float32)
    laplacian = _laplacian(grey) if min(grey.shape) > 2 else np.zeros(1)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]  # channel-wise max/min: far faster than along axis 2
    spread = np.maximum(np.maximum(r, g), b).astype(np.int16) - np.minimum(np.minimum(r, g), b)
    return {
        "width": width, "height": height,
        "brightness_p99": float(p99), "brightness_p5": float(p5),
        "entropy": float(small.entropy()),
        # sharpness: the Laplacian's spread per level of the image's brightness range, so a dark image
        # (less contrast everywhere) is not also called blurry
        "sharpness": float(laplacian.std() / (255.0 * max(p99, 1 / 255))),
        "colour_spread": float(spread.mean()),
        # sha256 (truncated): twice blake2b's speed on CPUs with SHA extensions, the costliest property here
        "pixel_digest": hashlib.sha256(img.tobytes()).hexdigest()[:32] + f"-{width}x{height}",
    }
