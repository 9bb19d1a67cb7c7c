"""How far apart are copies and how close are distinct images? Sets the leakage guard's threshold.

For each of the shared HAM10000 originals: the 600x450 JPEG, and transformed copies of it
(flipped / rotated, resized to 96 px, re-encoded as JPEG q=75 or PNG). Prints the distribution of the
copy-to-original distance and of the nearest distinct image's distance (both min over 8 symmetries).
Usage: python bench/leakage_threshold.py [IMAGES_DIR]
"""

import io
import os
import sys

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from leakage_guard import image_hashes, min_distances  # noqa: E402

DEFAULT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ham10000",
                           "originals_600x450", "images")


def reencode(img: Image.Image, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".jpg"))
    originals, copies = [], {k: [] for k in ("hflip96_png", "vflip96_jpg", "rot90_96_jpg", "orig96_png")}
    for name in files:
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        small = img.resize((96, 96), Image.Resampling.BILINEAR)
        originals.append(image_hashes(img))
        copies["hflip96_png"].append(image_hashes(reencode(ImageOps.mirror(small), "PNG")))
        copies["vflip96_jpg"].append(image_hashes(reencode(ImageOps.flip(small), "JPEG")))
        copies["rot90_96_jpg"].append(image_hashes(reencode(small.rotate(90), "JPEG")))
        copies["orig96_png"].append(image_hashes(reencode(small, "PNG")))
    originals = np.array(originals)
    dist = min_distances(originals).astype(int)
    np.fill_diagonal(dist, 999)
    nearest = dist.min(axis=1)
    print(f"{len(files)} images")
    print(f"nearest distinct image: min {nearest.min()}, 1st pct {np.percentile(nearest, 1):.0f}, "
          f"median {np.median(nearest):.0f}; pairs at <= 6: {(dist <= 6).sum() // 2}, <= 10: {(dist <= 10).sum() // 2}")
    print("   hist of nearest:", np.bincount(nearest)[:20].tolist())
    for kind, hashes in copies.items():
        both = np.concatenate([originals, np.array(hashes)])
        d = min_distances(both).astype(int)
        n = len(files)
        own = np.array([min(d[i, n + i], d[n + i, i]) for i in range(n)])
        print(f"copy {kind:14s}: distance to its original max {own.max()}, 99th pct {np.percentile(own, 99):.0f}, "
              f"mean {own.mean():.2f}; hist {np.bincount(own)[:12].tolist()}")


if __name__ == "__main__":
    main()
