"""Image checks before training: every matched image is decoded once, bad ones are named, odd ones
are converted to plain 8-bit RGB so the model sees what a person sees.

Rules (documented in the README):
- unreadable, truncated or non-image files are skipped and named in a warning; when more than
  ``max_bad_fraction`` of the matched images are bad the run stops (the ZIP is probably wrong);
- images over Pillow's decompression-bomb limit count as bad (named, with their size);
- EXIF orientation is applied; grey, palette, CMYK, 16-bit and float images become 8-bit RGB;
  transparent pixels are composited on white. Converted copies go to the scratch folder as PNG; the
  user's files are never modified.
- With ``resize_to``, the copy the model reads is also resized (bilinear, antialiased) to the model's
  square input size, as PNG: Ludwig then decodes a small file every epoch instead of the full-size
  original (bench/throughput.py), and memory stays bounded by the batch. Hashes, colour thumbnails
  and sizes are taken from the full-size image.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from image_learner import host_allocator
from image_learner.errors import MAX_LISTED, InputError
from image_learner.data.image_properties import image_properties

DEFAULT_MAX_BAD_FRACTION = 0.05
PLAIN_MODES = ("RGB", "L")
PLAIN_FORMATS = ("JPEG", "PNG")
# Below this many images a process pool costs more than it saves (each worker starts a fresh Python).
MIN_IMAGES_PER_POOL = 200
# Training's resized copies are stored PNGs (side x side x 3 bytes each) while they take at most this much
# scratch disk (26,500 images at 224 px, 9,000 at 384 px); above, zlib level 1 (about a third of the size).
STORED_COPIES_MAX_BYTES = 4_000_000_000


def unreadable_images_note(bad: dict[str, str], n_images: int,
                           max_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> str | None:
    """The one rule for unreadable images, in training and in predict: none -> None; up to ``max_fraction``
    of the ``n_images`` checked -> a warning naming them; more -> InputError (the ZIP is probably wrong)."""
    if not bad:
        return None
    listing = "; ".join(f"{f}: {why}" for f, why in list(bad.items())[:MAX_LISTED])
    if len(bad) > max_fraction * n_images:
        raise InputError(f"{len(bad)} of {n_images} images cannot be used (more than {max_fraction:.0%}): {listing}")
    return f"{len(bad)} unreadable image(s) skipped: {listing}"


@dataclass
class CheckedImages:
    paths: list[str]  # path to read for each input (the original or a converted copy); None if bad
    bad: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    converted: dict[str, str] = field(default_factory=dict)  # relative path -> what was done
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of the readable ones
    hashes: list[np.ndarray] = field(default_factory=list)  # leakage-guard hashes of the readable ones
    thumbs: list[np.ndarray] = field(default_factory=list)  # leakage-guard colour thumbnails, likewise
    health: list[dict] = field(default_factory=list)  # image_properties.image_properties, likewise (or {} when off)


def _to_rgb8(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Return an 8-bit RGB version of ``img`` and what was changed."""
    done = []
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        high = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values / high * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        done.append("scaled 16-bit/float to 8-bit")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        done.append("transparency composited on white")
    elif img.mode != "RGB":
        done.append(f"{img.mode} converted to RGB")
        img = img.convert("RGB")
    return img, done


def check_image(path: str) -> tuple[Image.Image, list[str]]:
    """Decode ``path`` fully; returns the image as the model should see it and the changes made.

    Raises ``ValueError`` with a human-readable reason for anything that is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                fmt = img.format
                orientation = img.getexif().get(0x0112, 1)
                oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for broken or non-image files
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from err
    changes = [f"EXIF orientation {orientation} applied"] if orientation != 1 else []
    rgb, converted = _to_rgb8(oriented)
    changes += converted
    if not changes and fmt not in PLAIN_FORMATS:
        changes.append(f"{fmt} re-encoded as PNG")
    if not changes and img.mode not in PLAIN_MODES:
        changes.append(f"{img.mode} converted to RGB")
    return rgb, changes


def _check_one(job: tuple[str, str, str, int | None, bool, bool, int]) -> tuple:
    """Check one image: (path to read, what was converted or why it is bad, size, (hashes, thumbnail,
    health properties): hashes and thumbnail None without ``fingerprints``, properties {} without
    ``health``); converted or resized copies are written here."""
    root, rel, converted_dir, resize_to, fingerprints, health, png_level = job
    source = os.path.join(root, rel)
    try:
        img, changes = check_image(source)
    except ValueError as err:
        return None, str(err), None, None
    # here: each image is decoded once (hashes, thumbnail and health properties from the same pixels);
    # predict has no leakage guard, so it skips the hashes
    hashes, thumb = _fingerprint(img) if fingerprints else (None, None)
    fingerprint = hashes, thumb, image_properties(img) if health else {}
    size = img.size
    resize = bool(resize_to) and size != (resize_to, resize_to)
    if not changes and not resize:
        return source, None, size, fingerprint
    if resize:
        img = img.resize((resize_to, resize_to), Image.Resampling.BILINEAR)
    target = os.path.join(converted_dir, rel + ".png")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if png_level == 0:
        write_stored_png(target, img)
    else:
        img.save(target, format="PNG", compress_level=png_level)  # lossless; 1: 3x smaller than stored
    return target, "; ".join(changes) or None, size, fingerprint


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def write_stored_png(target: str, img: Image.Image) -> None:
    """Write 8-bit RGB ``img`` as a PNG with no filter and stored (level-0) deflate blocks: the same pixels as
    any PNG of it, ~5x faster to write than Pillow's level 0 (which still filters every row) and ~7x faster for
    Ludwig to decode than level 1, at width x height x 3 bytes on disk (BENCHMARKS.md, issue 22)."""
    if img.mode != "RGB":
        raise ValueError(f"write_stored_png takes RGB images, not {img.mode}")
    width, height = img.size
    rows = np.zeros((height, 1 + 3 * width), np.uint8)  # each row: filter byte 0 (none), then the pixels
    rows[:, 1:] = np.asarray(img).reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    with open(target, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(rows.data, 0)) + _png_chunk(b"IEND", b""))


def _fingerprint(img: Image.Image) -> tuple:
    """The leakage guard's hashes and thumbnail; imported here so that predict, which computes none, does
    not import the guard (and scipy) at all."""
    from image_learner.data.leakage_guard import image_hashes, image_thumbnail

    return image_hashes(img), image_thumbnail(img)


def check_images(root: str, rel_paths: list[str], converted_dir: str, workers: int = 1,
                 resize_to: int | None = None, health: bool = True, fingerprints: bool = True,
                 png_level: int | None = None) -> CheckedImages:
    """Check every image under ``root``; converted (and, with ``resize_to``, resized) copies are
    written below ``converted_dir``.

    ``workers`` > 1 decodes in that many processes (spawned, not forked: the caller may hold torch's
    threads); results keep the order of ``rel_paths``. ``health``: also compute the image-health
    properties (image_properties.py) from the same decoded image. Without ``fingerprints`` no leakage-guard hashes
    or thumbnails are computed (``hashes`` and ``thumbs`` stay empty). ``png_level``: the copies' zlib level
    (0: stored, ``write_stored_png``, 147 KB at 224 px; 1: ~53 KB, 14x slower to write and 4x slower to
    decode; BENCHMARKS.md, "Image check against PIL loops"); None: as training writes them
    (``copy_png_level``), so a benchmark that calls this reads the copies a run reads."""
    if png_level is None:
        png_level = copy_png_level(len(rel_paths), resize_to)
    jobs = [(root, rel, converted_dir, resize_to, fingerprints, health, png_level) for rel in rel_paths]
    if workers > 1 and len(jobs) >= MIN_IMAGES_PER_POOL:
        outcomes = _check_in_pool(jobs, workers)
    else:
        outcomes = [_check_one(job) for job in jobs]
    result = CheckedImages(paths=[])
    for rel, (path, note, size, fingerprint) in zip(rel_paths, outcomes):
        result.paths.append(path)
        if path is None:
            result.bad[rel] = note
            continue
        result.sizes.append(size)
        if fingerprint[0] is not None:
            result.hashes.append(fingerprint[0])
            result.thumbs.append(fingerprint[1])
        result.health.append(fingerprint[2])
        if note:
            result.converted[rel] = note
    return result


def copy_png_level(n_images: int, side: int | None) -> int:
    """The zlib level of training's resized copies: 0 (stored: ~14x faster to write than level 1 and ~4x
    faster for Ludwig to decode every epoch; the same pixels) unless ``n_images`` copies of ``side`` px
    would pass STORED_COPIES_MAX_BYTES of scratch disk, then 1; 1 without resizing (copies of any size)."""
    return 0 if side and n_images * side * side * 3 <= STORED_COPIES_MAX_BYTES else 1


def _check_in_pool(jobs: list, workers: int) -> list:
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker)
    try:
        return list(pool.map(_check_one, jobs, chunksize=max(1, len(jobs) // (workers * 16))))
    except BaseException:
        # Stopped (SIGTERM/SIGINT as an exception) or failed: end the workers now instead of letting
        # them finish every queued image, and leave none running.
        pool.shutdown(wait=False, cancel_futures=True)
        started = set(multiprocessing.active_children()) - before
        for process in started:
            process.terminate()
        for process in started:
            process.join(10)
        raise
    finally:
        pool.shutdown(wait=True)


def _start_worker() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (no traceback from every worker), and
    keep freed image buffers in their heap as the main process does (``host_allocator.tune``): with glibc's
    defaults each image's ~150 KB arrays were unmapped and faulted in again, ~220 minor faults an image;
    tuned, the check takes a fifth less CPU (BENCHMARKS.md, "The image check's workers")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host_allocator.tune()
