"""The image encoder: any timm backbone, registered with Ludwig's encoder registry as ``image_learner_timm``.

Ludwig's own ``timm`` encoder is subclassed (never patched) for three things it lacks:
- input normalisation with the backbone's own mean/std (Ludwig feeds [0, 1] pixels; timm weights
  expect e.g. ImageNet statistics, or 0.5/0.5 for the TF EfficientNet-Lite family);
- the training image size passed to models with a fixed input size (ViTs);
- pretrained weights from a local file (``pretrained_weights``), and a clear error when a download
  fails instead of a traceback from the hub.
Model names: friendly aliases (``caformer_s18_384``) and validation with close-name suggestions.
"""

from __future__ import annotations

import difflib
import os

import torch

ENCODER_TYPE = "image_learner_timm"

# Friendly names used by the Galaxy tutorial and the tool form -> timm names with a pretrained tag.
MODEL_ALIASES = {
    "caformer_s18_384": "caformer_s18.sail_in1k_384",
    "caformer_s36_384": "caformer_s36.sail_in1k_384",
    "caformer_m36_384": "caformer_m36.sail_in1k_384",
    "caformer_b36_384": "caformer_b36.sail_in1k_384",
    "convformer_s18_384": "convformer_s18.sail_in1k_384",
    "convformer_s36_384": "convformer_s36.sail_in1k_384",
    "convformer_m36_384": "convformer_m36.sail_in1k_384",
    "convformer_b36_384": "convformer_b36.sail_in1k_384",
}


class BackboneError(Exception):
    """The backbone cannot be built as asked (unknown name, weights not available)."""


OFFLINE_HELP = (
    "To train without internet access, either (a) pre-download the weights on a connected machine "
    "into a Hugging Face cache (HF_HOME=/shared/hf python -c \"import timm; timm.create_model('{name}', "
    "pretrained=True)\") and run with HF_HOME pointing there and HF_HUB_OFFLINE=1, or (b) pass "
    "--pretrained-weights FILE with a timm state dict (.safetensors or .pth) for '{name}', or (c) train "
    "from scratch with --no-use-pretrained (much weaker on small data sets)."
)


def resolve_model_name(name: str) -> str:
    """Map an alias to its timm name and check timm knows the architecture; suggest close names."""
    import timm

    name = name.strip()
    resolved = MODEL_ALIASES.get(name, name)
    arch, _, tag = resolved.partition(".")
    if not timm.is_model(arch):
        known = sorted(set(timm.list_models()) | set(MODEL_ALIASES))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise BackboneError(f"unknown timm model {name!r}{hint}")
    if tag and resolved not in timm.list_pretrained(resolved):
        tags = timm.list_pretrained(arch + ".*")
        raise BackboneError(
            f"timm model {arch!r} has no pretrained weights tagged {tag!r}; available: {', '.join(tags) or 'none'}"
        )
    return resolved


def default_image_size(model_name: str) -> int:
    """The input side the backbone was pretrained at (timm's pretrained config), e.g. 384 for *_384."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def create_backbone(model_name: str, use_pretrained: bool, image_size: int | None,
                    pretrained_weights: str | None = None) -> torch.nn.Module:
    """timm model without its classifier head; pretrained from ``pretrained_weights`` when given."""
    import timm

    kwargs: dict = {"num_classes": 0}
    if use_pretrained and pretrained_weights:
        if not os.path.isfile(pretrained_weights):
            raise BackboneError(f"--pretrained-weights file {pretrained_weights!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(pretrained_weights)}
    try:
        try:
            return timm.create_model(model_name, pretrained=use_pretrained, img_size=image_size, **kwargs)
        except TypeError:  # convolutional models take any size and have no img_size argument
            return timm.create_model(model_name, pretrained=use_pretrained, **kwargs)
    except BackboneError:
        raise
    except Exception as err:  # hub/network/file errors come in many types; all mean "no weights"
        if not use_pretrained:
            raise
        source = f"file {pretrained_weights!r}" if pretrained_weights else "the Hugging Face hub"
        raise BackboneError(
            f"could not load pretrained weights for {model_name!r} from {source}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
            + OFFLINE_HELP.format(name=model_name)
        ) from err


def pixel_statistics(backbone: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's own input mean and std (timm's pretrained config; ImageNet's when it has none), as
    1x3x1x1 float32 tensors: Ludwig feeds [0, 1] pixels, timm weights expect these statistics."""
    data_config = backbone.pretrained_cfg
    mean = torch.tensor(data_config.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
    std = torch.tensor(data_config.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
    return mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)


def normalised_features(backbone: torch.nn.Module, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                        inputs: torch.Tensor) -> torch.Tensor:
    """The backbone's features of [0, 1] pixels (N x 3 x S x S): the encoder's forward, and predict's
    (model/inference_network.py), so both compute exactly the same numbers."""
    pixels = (inputs - pixel_mean) / pixel_std
    # Channels-last whatever layout the batch came in (Ludwig's resized images arrive in NCHW,
    # decoded ones in NHWC strides): depthwise convolutions ran 1.9x faster in it on CPU
    # (bench/throughput.py), and one fixed layout keeps the numbers reproducible.
    return backbone(pixels.contiguous(memory_format=torch.channels_last))


def register_with_ludwig() -> None:
    """Register the encoder and its config schema (idempotent); call before building a LudwigModel."""
    from ludwig.constants import ENCODER_OUTPUT, IMAGE
    from ludwig.encoders.image.timm import TimmEncoder
    from ludwig.encoders.registry import get_encoder_registry, register_encoder
    from ludwig.schema import utils as schema_utils
    from ludwig.schema.encoders.image.timm import TimmEncoderConfig
    from ludwig.schema.encoders.utils import register_encoder_config

    if ENCODER_TYPE in get_encoder_registry().get(IMAGE, {}):
        return

    @register_encoder_config(ENCODER_TYPE, IMAGE)
    class ImageLearnerTimmEncoderConfig(TimmEncoderConfig):
        type: str = schema_utils.ProtectedString(ENCODER_TYPE, description="Type of encoder.")
        image_size: int | None = schema_utils.PositiveInteger(
            default=None, allow_none=True, description="Square input side the images are resized to."
        )
        pretrained_weights: str | None = schema_utils.String(
            default=None, allow_none=True,
            description="Local timm state dict (.safetensors/.pth) to use instead of a hub download.",
        )

    @register_encoder(ENCODER_TYPE, IMAGE)
    class ImageLearnerTimmEncoder(TimmEncoder):
        def __init__(self, model_name: str = "caformer_s18", use_pretrained: bool = True,
                     trainable: bool = True, saved_weights_in_checkpoint: bool = False,
                     image_size: int | None = None, pretrained_weights: str | None = None,
                     encoder_config=None, **kwargs):
            torch.nn.Module.__init__(self)  # TimmEncoder.__init__ would build (and download) twice
            self.config = encoder_config
            # A saved model carries its weights: never download them again at load time.
            pretrained = use_pretrained and not saved_weights_in_checkpoint
            self.model = create_backbone(model_name, pretrained, image_size, pretrained_weights)
            data_config = self.model.pretrained_cfg
            side = image_size or int(data_config.get("input_size", (3, 224, 224))[-1])
            self._input_size = (3, side, side)
            mean, std = pixel_statistics(self.model)
            self.register_buffer("pixel_mean", mean, persistent=False)
            self.register_buffer("pixel_std", std, persistent=False)
            with torch.no_grad():
                self.model.eval()
                self._output_dim = self.model(torch.zeros(1, *self._input_size)).shape[-1]
                self.model.train()
            for param in self.model.parameters():
                param.requires_grad_(trainable)

        def forward(self, inputs: torch.Tensor):
            return {ENCODER_OUTPUT: normalised_features(self.model, self.pixel_mean, self.pixel_std, inputs)}

        @staticmethod
        def get_schema_cls():
            return ImageLearnerTimmEncoderConfig
