"""Test-time augmentation (``--tta``): each image seen in 2 (``flips``) or 8 (``dihedral``) exact views and
the model's outputs averaged over them (pure, except ``view_copies``, which writes the views' files).

Dermoscopy and microscopy images have no "up": a lesion turned by 90° or mirrored is the same lesion, so
averaging over those views cancels some of what the model learnt from orientation alone (fastai's and
MONAI's TTA do the same). The views are exact pixel permutations (quarter turns, then a left-right
mirror) of the image *after* the resize to the model's square size, so a view is the same pixels whether
it is written as a file for Ludwig (training's evaluation) or stacked into a batch (predict): one
definition, ``view_array``, serves both. Probabilities are averaged before the training's temperature is
applied; the temperature, threshold and conformal sets are then fitted on these averaged validation
probabilities, so predict must average over the same views (the manifest records the mode).
"""

from __future__ import annotations

import os

import numpy as np

MODES = ("none", "flips", "dihedral")
DEFAULT_MODE = "none"


def views(mode: str) -> list[tuple[int, bool]]:
    """The views of ``mode`` as (quarter turns counter-clockwise, mirrored left-right), the plain view first."""
    if mode not in MODES:
        raise ValueError(f"--tta must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return [(0, False)]
    if mode == "flips":
        return [(0, False), (0, True)]
    return [(turns, mirrored) for mirrored in (False, True) for turns in range(4)]


def view_array(pixels: np.ndarray, view: tuple[int, bool]) -> np.ndarray:
    """One view of an H×W(×C) image array (or an N×H×W×C batch: ``batch_view``)."""
    turns, mirrored = view
    out = np.rot90(pixels, turns, axes=(0, 1)) if turns else pixels
    return np.ascontiguousarray(out[:, ::-1] if mirrored else out)


def batch_view(batch: np.ndarray, view: tuple[int, bool]) -> np.ndarray:
    """``view_array`` of every image of an N×H×W×C batch."""
    turns, mirrored = view
    out = np.rot90(batch, turns, axes=(1, 2)) if turns else batch
    return np.ascontiguousarray(out[:, :, ::-1] if mirrored else out)


def averaged(outputs_per_view: list[np.ndarray]) -> np.ndarray:
    """The mean over views of the model's outputs (class probabilities or a regression's values): each view
    weighs the same."""
    if not outputs_per_view:
        raise ValueError("no views to average")
    return np.mean(np.stack([np.asarray(o, dtype=float) for o in outputs_per_view]), axis=0)


def view_copies(paths: list[str], view: tuple[int, bool], dest_dir: str) -> list[str]:
    """Files of ``view`` of each image in ``paths`` (the resized copies the model reads), written below
    ``dest_dir`` as stored PNG (read once); the plain view is the files themselves."""
    if view == (0, False):
        return list(paths)
    from PIL import Image

    from image_learner.data.image_check import check_image

    os.makedirs(dest_dir, exist_ok=True)
    out = []
    for i, path in enumerate(paths):
        img, _ = check_image(path)
        target = os.path.join(dest_dir, f"{i:07d}.png")
        Image.fromarray(view_array(np.asarray(img), view)).save(target, format="PNG", compress_level=0)
        out.append(target)
    return out


def describe(mode: str) -> str:
    """The mode in words, for logs, the report and the model card."""
    if mode == "none":
        return "none (each image seen once)"
    n = len(views(mode))
    what = "the image and its left-right mirror" if mode == "flips" else "4 quarter turns, each also mirrored"
    return f"{mode}: probabilities averaged over {n} views ({what})"
