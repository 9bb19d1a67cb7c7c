"""How far apart are copies and how close are distinct images? Sets the leakage guard's threshold.

For each of the shared HAM10000 originals: the 600x450 JPEG, and transformed copies of it
(flipped / rotated, resized to 96 px, re-encoded as JPEG q=75 or PNG). Prints the distribution of the
copy-to-original distance and of the nearest distinct image's distance (both min over 8 symmetries),
the colour-thumbnail distance of copies to their original, and how the guard groups all of them at
once: copies missed (not grouped with their original) and false merges (distinct originals grouped).
Usage: python bench/leakage_threshold.py [IMAGES_DIR]
"""

import io
import os
import sys

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from image_learner.data.leakage_guard import (DEFAULT_MAX_DISTANCE, colour_distances, duplicate_groups, image_hashes,  # noqa: E402
                           image_thumbnail, min_distances)

DEFAULT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ham10000",
                           "originals_600x450", "images")


def reencode(img: Image.Image, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


COPIES = {
    "hflip96_png": lambda small: reencode(ImageOps.mirror(small), "PNG"),
    "vflip96_jpg": lambda small: reencode(ImageOps.flip(small), "JPEG"),
    "rot90_96_jpg": lambda small: reencode(small.rotate(90), "JPEG"),
    "orig96_png": lambda small: reencode(small, "PNG"),
}


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".jpg"))
    originals, thumbs = [], []
    copies, copy_thumbs = {k: [] for k in COPIES}, {k: [] for k in COPIES}
    for name in files:
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        small = img.resize((96, 96), Image.Resampling.BILINEAR)
        originals.append(image_hashes(img))
        thumbs.append(image_thumbnail(img))
        for kind, make in COPIES.items():
            copy = make(small)
            copies[kind].append(image_hashes(copy))
            copy_thumbs[kind].append(image_thumbnail(copy))
    originals, thumbs = np.array(originals), np.array(thumbs)
    n = len(files)
    dist = min_distances(originals).astype(int)
    np.fill_diagonal(dist, 999)
    nearest = dist.min(axis=1)
    print(f"{n} images")
    print(f"nearest distinct image: min {nearest.min()}, 1st pct {np.percentile(nearest, 1):.0f}, "
          f"median {np.median(nearest):.0f}; pairs at <= 6: {(dist <= 6).sum() // 2}, <= 10: {(dist <= 10).sum() // 2}")
    print("   hist of nearest:", np.bincount(nearest)[:20].tolist())
    for kind, hashes in copies.items():
        both = np.concatenate([originals, np.array(hashes)])
        d = min_distances(both).astype(int)
        own = np.array([min(d[i, n + i], d[n + i, i]) for i in range(n)])
        colour = colour_distances(np.concatenate([thumbs, np.array(copy_thumbs[kind])]), np.arange(n), np.arange(n) + n)
        print(f"copy {kind:14s}: distance to its original max {own.max()}, 99th pct {np.percentile(own, 99):.0f}, "
              f"mean {own.mean():.2f}; hist {np.bincount(own)[:12].tolist()}; colour distance max {colour.max():.2f}, "
              f"99th pct {np.percentile(colour, 99):.2f}")
    # Everything at once, as the guard sees a data set: originals followed by every kind of copy.
    all_hashes = np.concatenate([originals] + [np.array(h) for h in copies.values()])
    all_thumbs = np.concatenate([thumbs] + [np.array(t) for t in copy_thumbs.values()])
    groups = duplicate_groups(all_hashes, all_thumbs, DEFAULT_MAX_DISTANCE)
    source = np.tile(np.arange(n), 1 + len(copies))  # which original each image comes from
    missed = int((groups[n:] != groups[source[n:]]).sum())
    false_merges = n - len(np.unique(groups[:n]))  # originals that joined another original's group
    print(f"grouping {len(all_hashes)} images at max distance {DEFAULT_MAX_DISTANCE}: {len(np.unique(groups))} groups, "
          f"copies missed {missed} of {len(all_hashes) - n}, distinct originals merged {false_merges}")


if __name__ == "__main__":
    main()
