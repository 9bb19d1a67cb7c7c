#!/usr/bin/env python3
"""The host work of one training batch in Ludwig's lazy image path, step by step (issue 22).

Our trainer's ``batches_ahead`` moves this work to a background thread on a GPU; whether one thread keeps up
with the GPU depends on how long it takes. This times, for a batch of ``--batch`` model-sized copies written
by the tool's image check (stored PNGs, as training writes them, and zlib level 1, as the benchmarks wrote
them before session 16), each step Ludwig 0.17.10 runs per training batch with augmentation on:
- decoding the copies one by one with Ludwig's lazy decode function under the tool's image preprocessing;
- the same through a pool of 16 threads plus ``np.stack`` (``LazyColumn.__getitem__``: a new pool per batch);
- ``torch.tensor`` of the stacked batch (``RandomAccessBatcher._fetch_sync``);
- ``ImageAugmentation`` with ``random_horizontal_flip`` (float -> uint8 -> flip -> float), and its two
  conversions alone;
- the host copy of ``Trainer._batch_to_tensors`` (``np.array(copy=True)``).
Median of ``--repeats`` (wall ms; the decode steps also main-thread CPU ms), with glibc's allocator as the
tool's command line sets it (host_allocator) unless ``--glibc-defaults``.

    python bench/batch_assembly.py --source /work/shared/data/ham10000/ham10000_200x150/images --sizes 224 384
    python bench/batch_assembly.py --source ... --threads 2     # torch's intra-op threads (default 1)
"""

import argparse
import glob
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(step, repeats: int) -> tuple[object, float, float]:
    """(last result, median wall ms, median CPU ms of this thread) of ``repeats`` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return result, float(np.median(walls)) * 1e3, float(np.median(cpus)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="a folder of images (the first --batch are used)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--glibc-defaults", action="store_true", help="leave glibc's allocator as it is")
    a = parser.parse_args()

    from image_learner import host_allocator

    tuned = False if a.glibc_defaults else host_allocator.tune()
    import torch
    from ludwig.features.image_feature import ImageAugmentation, ImageFeatureMixin
    from ludwig.schema.features.augmentation.image import RandomHorizontalFlipConfig

    from image_learner.data.image_check import check_images

    torch.set_num_threads(a.threads)
    files = sorted(glob.glob(os.path.join(os.path.abspath(a.source), "*")))[:a.batch]
    print(f"{len(files)} images from {a.source}; torch threads {a.threads}; allocator tuned: {tuned}; "
          f"median of {a.repeats}, ms per batch", flush=True)
    flip = ImageAugmentation([RandomHorizontalFlipConfig()], None, None)
    with tempfile.TemporaryDirectory() as work:
        for size in a.sizes:
            decode = ImageFeatureMixin._make_lazy_decode_fn(  # the tool's image preprocessing (ludwig_config)
                img_width=size, img_height=size, should_resize=True, num_channels=3, resize_method="interpolate",
                user_specified_num_channels=True, standardize_image=None, channel_class_map=torch.Tensor([]),
                default_image=np.zeros((3, size, size), np.float32))
            batch = None
            for level, name in ((0, "stored (training's copies)"), (1, "zlib level 1")):
                copies = check_images("/", [f.lstrip("/") for f in files], os.path.join(work, f"{size}-{level}"),
                                      1, size, health=False, fingerprints=False, png_level=level).paths
                _, wall, cpu = timed(lambda: [decode(p) for p in copies], a.repeats)
                print(f"{size} px, {name}: decode one by one {wall:.1f} (CPU {cpu:.1f})")

                def pooled():
                    with ThreadPoolExecutor(max_workers=min(16, len(copies))) as pool:
                        return np.stack(list(pool.map(decode, copies)))

                batch, wall, cpu = timed(pooled, a.repeats)
                print(f"{size} px, {name}: 16-thread pool + np.stack {wall:.1f} (main-thread CPU {cpu:.1f})")
            tensor, wall, _ = timed(lambda: torch.tensor(batch), a.repeats)
            print(f"{size} px: torch.tensor {wall:.1f}")
            _, wall, _ = timed(lambda: flip(tensor), a.repeats)
            print(f"{size} px: ImageAugmentation(random_horizontal_flip) {wall:.1f}")
            as_bytes, wall, _ = timed(lambda: flip._convert_back_to_uint8(tensor), a.repeats)
            print(f"{size} px:   of which float -> uint8 {wall:.1f}")
            _, wall, _ = timed(lambda: flip._renormalize_image(as_bytes), a.repeats)
            print(f"{size} px:   of which uint8 -> float {wall:.1f}")
            with warnings.catch_warnings():  # numpy's note on copying a tensor through __array__
                warnings.simplefilter("ignore")
                _, wall, _ = timed(lambda: torch.from_numpy(np.array(tensor, copy=True)), a.repeats)
            print(f"{size} px: _batch_to_tensors' host copy {wall:.1f}", flush=True)


if __name__ == "__main__":
    main()
