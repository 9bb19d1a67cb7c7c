"""Same seed, same numbers, whatever the machine's load: the random augmentations are drawn in the training
thread, in batch order, never by Ludwig's prefetching thread racing the trainer (bench/determinism_under_load.py
shows the race). Deterministic tests: the set-up time is chosen, not left to the scheduler."""

import time

import numpy as np
import pytest
import torch

from image_learner.training.ludwig_config import TrainingOptions, build_ludwig_config

# Ludwig 0.17.10 (ludwig/data/dataset/pandas.py): a lazy image feature whose prefetch_size is null prefetches
# 4 batches in a background thread.
LUDWIG_LAZY_DEFAULT_PREFETCH = 4


def _image_preprocessing(augmentation, mode="lazy"):
    opts = TrainingOptions(model_name="test_efficientnet", image_size=32, augmentation=augmentation,
                           preprocessing_mode=mode)
    return build_ludwig_config(opts, "multiclass")["input_features"][0]["preprocessing"]


@pytest.mark.parametrize("augmentation", [["random_horizontal_flip"], ["random_rotate", "random_blur"]])
def test_augmented_batches_are_prepared_in_the_training_thread(augmentation):
    assert _image_preprocessing(augmentation)["prefetch_size"] == 0
    assert _image_preprocessing(augmentation, mode="eager")["prefetch_size"] == 0


def test_without_augmentation_ludwig_keeps_prefetching():
    """No augmentation: the prefetching thread draws no random number (the sampler has its own seeded
    generator), so decoding may overlap the training step."""
    assert "prefetch_size" not in _image_preprocessing([])


class _Images:
    """A lazy image column's stand-in: one-row-of-pixels images 0,1,2,3 (3 first once flipped), ~2 ms per
    batch to "decode"."""

    features = {"image_path": None}

    def get(self, _name, indices):
        time.sleep(0.002)
        return np.broadcast_to(np.arange(4, dtype=np.float32), (len(indices), 1, 1, 4)).copy()


def _flipped_batches(prefetch_size, set_up_seconds):
    """Which batches of 2 epochs Ludwig's batcher flips, driven as its trainer drives it: made (its thread,
    if any, starts), the trainer's set-up work, then set_epoch(0) before the first batch."""
    from ludwig.data.batcher.random_access import RandomAccessBatcher
    from ludwig.data.sampler import DistributedSampler
    from ludwig.features.image_feature import RandomHFlip

    torch.manual_seed(42)
    batcher = RandomAccessBatcher(_Images(), DistributedSampler(160, shuffle=True, random_seed=42), batch_size=16,
                                  ignore_last=True, prefetch_size=prefetch_size,
                                  augmentation_pipeline={"image_path": RandomHFlip(None)})
    time.sleep(set_up_seconds)
    flipped = []
    for epoch in range(2):
        batcher.set_epoch(epoch, 16)
        while not batcher.last_batch():
            flipped.append(bool(torch.as_tensor(batcher.next_batch()["image_path"])[0, 0, 0, 0] == 3))
    return flipped


def test_the_same_batches_are_flipped_however_long_the_set_up_takes():
    """With the prefetch_size this tool gives Ludwig, the flips do not depend on how far a background thread
    got before set_epoch(0): with Ludwig's default (4) a 0.2 s set-up let it draw flips for 6 batches that
    were then thrown away, shifting every later flip."""
    configured = _image_preprocessing(["random_horizontal_flip"]).get("prefetch_size")
    prefetch = LUDWIG_LAZY_DEFAULT_PREFETCH if configured is None else configured
    quick = _flipped_batches(prefetch, 0.0)
    slow = _flipped_batches(prefetch, 0.2)
    assert len(quick) == 20 and 0 < sum(quick) < 20
    assert quick == slow
