"""The per-image augmentations (image_learner/training/image_augmentation.py): each image draws its own view,
crop and colour, where Ludwig 0.17.10's own augmentations draw once per batch; the ops run inside Ludwig's
augmentation pipeline from a config naming them."""

import numpy as np
import pytest
import torch

from image_learner.evaluation import tta
from image_learner.training import image_augmentation as aug


def _batch(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    """``n`` copies of one asymmetric uint8 image (N×3×size×size): any view or crop of it differs from it."""
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return image.expand(n, -1, -1, -1).clone()


def test_each_dihedral_view_is_the_tta_view_of_the_same_number():
    image = _batch(1)[0]
    as_array = image.permute(1, 2, 0).numpy()  # H×W×C, as tta sees the image
    for turns, mirrored in tta.views("dihedral"):
        ours = aug.dihedral_view(image, turns, mirrored).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ours, tta.view_array(as_array, (turns, mirrored)))
    draws = torch.arange(8)
    batch = aug.dihedral_batch(_batch(8), draws)
    assert len({bytes(view.numpy()) for view in batch}) == 8  # the 8 draws are 8 different views
    with pytest.raises(ValueError, match="square"):
        aug.dihedral_batch(torch.zeros(2, 3, 4, 6, dtype=torch.uint8), torch.zeros(2))


def _ludwig_op(name: str):
    import ludwig.features.image_feature  # noqa: F401  registers Ludwig's own ops
    from ludwig.constants import IMAGE
    from ludwig.schema.features.augmentation.utils import get_augmentation_cls
    from ludwig.utils.augmentation_utils import get_augmentation_op

    aug.register_with_ludwig()
    config = get_augmentation_cls(IMAGE, name)().model_validate({"type": name})
    return get_augmentation_op(IMAGE, name)(config)


def test_ludwig_flips_a_whole_batch_at_once_ours_each_image():
    # The reason this module exists: Ludwig's flip draws one coin for the batch, so 64 copies of one image
    # come out all alike. If a Ludwig upgrade draws per image this fails: re-measure whether ours still help.
    batch = _batch(64, size=48)  # large enough for many different integer crops
    torch.manual_seed(3)
    for _ in range(4):
        assert len({bytes(image.numpy()) for image in _ludwig_op("random_horizontal_flip")(batch)}) == 1
    for name in aug.EACH_IMAGE:
        torch.manual_seed(3)
        out = _ludwig_op(name)(batch)
        assert out.shape == batch.shape and out.dtype == torch.uint8, name
        distinct = len({bytes(image.numpy()) for image in out})
        # dihedral: all 8 views among 64 images (each missed with chance (7/8)^64 ~ 2e-4; seeded); a crop
        # or a colour change: (nearly) each image its own
        assert distinct == 8 if name == aug.DIHEDRAL else distinct > 48, (name, distinct)


def test_the_same_seed_gives_the_same_augmented_batch():
    batch = _batch(16, size=20)
    for name in aug.EACH_IMAGE:
        op = _ludwig_op(name)
        torch.manual_seed(11)
        first = op(batch)
        torch.manual_seed(11)
        np.testing.assert_array_equal(op(batch).numpy(), first.numpy(), err_msg=name)
        assert not torch.equal(op(batch), first), name  # and the next draw differs


def _photo(size: int) -> torch.Tensor:
    """A smooth 3×size×size image, as photographs are: colour gradients and a dark round "lesion"."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    lesion = ((x - 0.45) ** 2 + (y - 0.55) ** 2 < 0.06).float()
    image = torch.stack([0.3 + 0.6 * x, 0.2 + 0.6 * y, 0.5 + 0.3 * x * y]) * (1 - 0.6 * lesion)
    return (image * 255).round().to(torch.uint8)


def test_crop_and_jitter_keep_the_image_recognisable():
    # A crop keeps at least 64% of the area and is resized back; the jitter changes brightness, contrast
    # and saturation by at most 20%: each image stays far closer to itself than to another image (here: the same one turned 180°).
    image = _photo(48)
    batch, other = image.expand(32, -1, -1, -1).clone(), torch.rot90(image, 2, dims=(1, 2)).float()
    unrelated = (other - image.float()).abs().mean().item()
    for name in (aug.RESIZED_CROP, aug.COLOR_JITTER):
        torch.manual_seed(5)
        out = _ludwig_op(name)(batch).float()
        own = (out - image.float()).abs().mean(dim=(1, 2, 3))
        assert own.max().item() < 0.5 * unrelated, (name, own.max().item(), unrelated)
        assert own.min().item() < own.max().item()  # and the images differ from one another


def test_a_config_naming_them_validates_and_runs_in_ludwigs_pipeline():
    from ludwig.features.image_feature import ImageAugmentation

    from image_learner.training import ludwig_config, ludwig_trainer

    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=16, use_pretrained=False,
                                            augmentation=list(aug.EACH_IMAGE))
    rendered = ludwig_trainer.rendered_config(ludwig_config.build_ludwig_config(options, "multiclass"))
    image = next(f for f in rendered["input_features"] if f["name"] == ludwig_config.IMAGE_FEATURE)
    assert [a["type"] for a in image["augmentation"]] == list(aug.EACH_IMAGE)
    assert image["preprocessing"]["prefetch_size"] == 0  # drawn in the training thread: reproducible

    from ludwig.constants import IMAGE
    from ludwig.schema.features.augmentation.utils import get_augmentation_cls

    configs = [get_augmentation_cls(IMAGE, a["type"])().model_validate(a) for a in image["augmentation"]]
    pipeline = ImageAugmentation(configs)  # as Ludwig's image feature builds it (no normalisation: ours)
    pixels = torch.rand(4, 3, 16, 16)
    torch.manual_seed(0)
    out = pipeline(pixels)
    assert out.shape == pixels.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, pixels)
