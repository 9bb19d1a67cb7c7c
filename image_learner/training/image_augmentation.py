"""Augmentations drawn for each image, registered through Ludwig's augmentation registries.

Ludwig 0.17.10's own image augmentations (ludwig/features/image_feature.py: random_horizontal_flip,
random_vertical_flip, random_rotate, random_blur, random_brightness, random_contrast) draw one coin per
*batch*: with random_horizontal_flip all 32 images of a batch are mirrored or none is, and random_rotate turns
the whole batch by one angle. Within a batch the images are then never seen in different orientations, and
half the batches carry no augmentation at all. The ones here draw for every image:

- ``dihedral``: one of the 8 exact quarter-turn/mirror views, each with probability 1/8 (the views
  ``--tta dihedral`` averages over, evaluation/tta.py; a dermoscopy or microscopy image has no "up");
- ``resized_crop``: torchvision's RandomResizedCrop, a crop of 64-100% of the area (aspect 3:4 to 4:3)
  resized back to the model's size, so the model does not learn the lesion's exact scale and framing;
- ``color_jitter``: torchvision's ColorJitter, brightness, contrast and saturation by up to ±20%, so
  lighting and camera differences between clinics matter less. The hue stays: colour is diagnostic in
  dermoscopy, and a hue shift cost 75 ms a batch of 32 at 160 px here against 12 ms without (the RGB->HSV
  round trip), a tenth of a CPU training step.

Ludwig hands the ops a uint8 N×C×H×W batch (its ImageAugmentation undoes the [0, 1] scaling first) and
applies them to training batches only. They draw from torch's global generator, which Ludwig seeds, in the
training thread (ludwig_config sets prefetch_size 0 whenever augmentation is on): the same seed gives the
same augmented batches. The pure cores take their draws as arguments (``dihedral_view``, ``dihedral_batch``)
or a transform to apply per image (``each_image``).
"""

from __future__ import annotations

import torch

DIHEDRAL = "dihedral"
RESIZED_CROP = "resized_crop"
COLOR_JITTER = "color_jitter"
EACH_IMAGE = (DIHEDRAL, RESIZED_CROP, COLOR_JITTER)

CROP_AREA = (0.64, 1.0)  # fraction of the image's area a crop keeps (a side of 80-100%)
CROP_ASPECT = (3 / 4, 4 / 3)
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2}


def dihedral_view(image: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """One view of a C×H×W image: ``turns`` quarter turns counter-clockwise, then mirrored left-right: the
    same view as tta.view_array's (turns, mirrored) of the H×W×C array."""
    out = torch.rot90(image, turns, dims=(1, 2)) if turns else image
    return torch.flip(out, dims=(2,)) if mirrored else out


def dihedral_batch(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Each image of an N×C×H×W batch (square) in the view ``draws[i]`` (0-7: turns = d % 4, mirrored =
    d >= 4)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral views need square images, got {tuple(images.shape[-2:])}")
    return torch.stack([dihedral_view(image, int(d) % 4, int(d) >= 4) for image, d in zip(images, draws)])


def each_image(images: torch.Tensor, transform) -> torch.Tensor:
    """``transform`` applied to every image of an N×C×H×W batch on its own (its own random draws)."""
    return torch.stack([transform(image) for image in images]) if len(images) else images


def resized_crop_transform(size: tuple[int, int]):
    from torchvision import transforms

    return transforms.RandomResizedCrop(size, scale=CROP_AREA, ratio=CROP_ASPECT, antialias=True)


def color_jitter_transform():
    from torchvision import transforms

    return transforms.ColorJitter(**JITTER)


def register_with_ludwig() -> None:
    """Register the ops and their config schemas (idempotent); call before a Ludwig config naming them is
    validated, a model trained or loaded."""
    import ludwig.schema.features.augmentation.image  # noqa: F401  Ludwig's own configs first: the registry exists
    from ludwig.constants import IMAGE
    from ludwig.schema import utils as schema_utils
    from ludwig.schema.features.augmentation.base import BaseAugmentationConfig
    from ludwig.schema.features.augmentation.utils import get_augmentation_classes, register_augmentation_config
    from ludwig.utils.augmentation_utils import register_augmentation_op

    if DIHEDRAL in get_augmentation_classes(IMAGE):
        return

    @register_augmentation_config(name=DIHEDRAL, features=IMAGE)
    class DihedralConfig(BaseAugmentationConfig):
        """Each image in one of its 8 quarter-turn/mirror views, drawn per image."""

        type: str = schema_utils.ProtectedString(DIHEDRAL)

    @register_augmentation_config(name=RESIZED_CROP, features=IMAGE)
    class ResizedCropConfig(BaseAugmentationConfig):
        """A random crop of each image (64-100% of its area), resized back."""

        type: str = schema_utils.ProtectedString(RESIZED_CROP)

    @register_augmentation_config(name=COLOR_JITTER, features=IMAGE)
    class ColorJitterConfig(BaseAugmentationConfig):
        """Brightness, contrast and saturation (±20%) changed per image."""

        type: str = schema_utils.ProtectedString(COLOR_JITTER)

    @register_augmentation_op(name=DIHEDRAL, features=IMAGE)
    class Dihedral(torch.nn.Module):
        def __init__(self, config):
            super().__init__()

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return dihedral_batch(imgs, torch.randint(0, 8, (len(imgs),)))

    @register_augmentation_op(name=RESIZED_CROP, features=IMAGE)
    class ResizedCrop(torch.nn.Module):
        def __init__(self, config):
            super().__init__()

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return each_image(imgs, resized_crop_transform(tuple(imgs.shape[-2:])))

    @register_augmentation_op(name=COLOR_JITTER, features=IMAGE)
    class ColorJitter(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.jitter = color_jitter_transform()

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return each_image(imgs, self.jitter)
