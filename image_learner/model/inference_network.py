"""Predict's network without Ludwig: the trained model rebuilt from the manifest alone and its saved weights.

Importing Ludwig and validating its schema was most of predict's fixed cost, and Ludwig's ``model.predict``
most of its per-image cost (BENCHMARKS.md, "Predict speed"). For the config Image Learner writes
(ludwig_config.py), Ludwig 0.17.10's ECD computes, at inference:
- the image feature: our encoder (timm_backbone: the backbone with ``num_classes=0``, normalised with its
  own mean/std, channels-last) on float32 N x 3 x S x S pixels in [0, 1];
- the concat combiner with one input and its defaults (no fully connected layers, no norm, no dropout at
  eval, no batch ensemble): the encoder's output itself;
- the output feature without fully connected layers of its own; its decoder, one ``Dense``
  (``torch.nn.Linear`` whose output is squeezed on its last dimension): the logits;
- its prediction module: softmax (category, no calibration, no CORN loss), sigmoid (binary), the value
  itself (number, no clip).
model_archive holds the saved config to exactly these settings (``NETWORK_FIELDS``). The weights come from
``model_weights.safetensors`` under Ludwig's names (``ludwig_name``), strictly: every tensor the network
has, with its shape and dtype, and nothing else (model_weights.check_weights, against ``expected_tensors``);
nothing is unpickled. tests/test_inference_network.py holds the numbers to Ludwig's own to 1e-5.
"""

from __future__ import annotations

import numpy as np
import torch

from image_learner.data import tabular
from image_learner.errors import InputError
from image_learner.model import model_weights
from image_learner.training import timm_backbone
from image_learner.training.ludwig_config import IMAGE_FEATURE, LABEL_FEATURE

# Ludwig's ECD names of the modules that hold tensors (its strict load's keys, the weights file's names)
ENCODER = f"input_features.module_dict.{IMAGE_FEATURE}__ludwig.encoder_obj.model."
DECODER = f"output_features.module_dict.{LABEL_FEATURE}__ludwig.decoder_obj.dense.dense."
LOSS = f"output_features.module_dict.{LABEL_FEATURE}__ludwig.train_loss_function.loss_fn."
OURS = {"backbone.": ENCODER, "head.": DECODER, "loss.": LOSS}


def ludwig_name(name: str) -> str:
    """Our state-dict name -> Ludwig's (``backbone.x`` -> the encoder's ``model.x``, ``head.x`` -> the decoder's
    dense layer's, ``loss.x`` -> the training loss's)."""
    for ours, theirs in OURS.items():
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise ValueError(f"no Ludwig name for {name!r}")


def head_outputs(manifest: dict) -> int:
    """The decoder's width: one logit per class of Ludwig's vocabulary, or one (binary, number)."""
    return len(manifest["label_vocabulary"]) if manifest["task"] == "multiclass" else 1


def loss_tensors(manifest: dict) -> dict[str, int]:
    """The weighted loss's tensor Ludwig keeps in the model (and so in the file), name -> length: balanced
    class weights (softmax cross-entropy's ``weight``, one per vocabulary class) or the positive class's
    weight (``pos_weight``). Training only: loaded, never used here."""
    training = manifest["training"]
    if manifest["task"] == "multiclass" and training["class_weights"] is not None:
        return {"weight": len(manifest["label_vocabulary"])}
    if manifest["task"] == "binary" and training["positive_weight"] is not None:
        return {"pos_weight": 1}
    return {}


class InferenceNetwork(torch.nn.Module):
    """Called on float32 N x 3 x S x S pixels in [0, 1]: Ludwig's ``label::logits`` (N x K; N for one output).
    ``backbone`` is the timm model (Grad-CAM hooks its last feature map, report_images)."""

    def __init__(self, backbone: torch.nn.Module, width: int, outputs: int, task: str,
                 loss: dict[str, int] | None = None, tabular_width: int = 0):
        super().__init__()
        self.backbone = backbone
        # --tabular-columns: the concat combiner puts the tabular features (passthrough) after the image's
        self.tabular_width = tabular_width
        self.head = torch.nn.Linear(width + tabular_width, outputs)
        self.loss = torch.nn.Module()  # the training loss's tensors (loss_tensors), held as Ludwig holds them
        for name, length in (loss or {}).items():
            self.loss.register_buffer(name, torch.zeros(length))
        mean, std = timm_backbone.pixel_statistics(backbone)
        self.register_buffer("pixel_mean", mean, persistent=False)  # not in Ludwig's file either
        self.register_buffer("pixel_std", std, persistent=False)
        self.task = task

    def forward(self, images: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        """``tabular``: a fused model's N x tabular_width inputs (data/tabular.py's encoding); None: zeros (the
        training mean, no category: Grad-CAM, whose map they cannot change through the linear head)."""
        features = timm_backbone.normalised_features(self.backbone, self.pixel_mean, self.pixel_std, images)
        if self.tabular_width:
            if tabular is None:
                tabular = torch.zeros(len(features), self.tabular_width, device=features.device)
            features = torch.cat([features, tabular.to(features.dtype)], dim=-1)
        return torch.squeeze(self.head(features), dim=-1)  # Ludwig's Dense squeezes a last dimension of 1

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Ludwig's prediction modules: category probabilities, P(positive), or the (z-scored) value."""
        if self.task == "multiclass":
            return torch.softmax(logits, -1)
        if self.task == "binary":
            return torch.sigmoid(logits)
        return logits


def build(manifest: dict, device: str | torch.device = "cpu") -> InferenceNetwork:
    """The network the (checked) manifest describes, randomly initialised (``load`` fills it), in eval mode;
    on the meta device: shapes only, no memory. The head's width is the encoder's output on a zero image, as
    Ludwig's encoder measures it (timm_backbone)."""
    side = manifest["image_size"]
    with torch.device(device):
        backbone = timm_backbone.create_backbone(manifest["model_name"], False, side)
        backbone.eval()
        with torch.no_grad():
            width = int(backbone(torch.zeros(1, 3, side, side)).shape[-1])
        network = InferenceNetwork(backbone, width, head_outputs(manifest), manifest["task"], loss_tensors(manifest),
                                   sum(tabular.width(r) for r in manifest.get("tabular") or []))
    return network.eval()


def expected_tensors(manifest: dict) -> model_weights.ExpectedTensors:
    """What the weights file must hold, under Ludwig's names: the network built on the meta device (also
    refuses a model above model_weights.MAX_PARAMETERS before anything is allocated)."""
    try:
        network = build(manifest, "meta")
    except Exception as err:  # a checked manifest that still cannot be built: the model is at fault
        raise InputError(f"the model its config describes cannot be built ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from err
    return model_weights.expected_tensors({ludwig_name(k): v for k, v in network.state_dict(keep_vars=True).items()})


def load(manifest: dict, weights_path: str, device: str = "cpu") -> InferenceNetwork:
    """The network with the weights of ``weights_path`` (already held to ``expected_tensors`` by
    model_weights.check_weights): safetensors only, every tensor of the network set (strict), tied ones
    from the one name stored."""
    from safetensors.torch import load_file

    saved = load_file(weights_path)
    network = build(manifest)
    groups: dict[int, list[str]] = {}  # tied tensors: safetensors keeps one name of each group
    for name, tensor in network.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    ours = {}
    for names in groups.values():
        stored = next(saved[ludwig_name(n)] for n in names if ludwig_name(n) in saved)
        ours.update({n: stored for n in names})
    network.load_state_dict(ours, strict=True)
    return network.to(device).eval()


def class_columns(probabilities: np.ndarray, manifest: dict) -> np.ndarray:
    """Ludwig's output -> predictions.csv's class columns (``manifest['classes']`` order), as
    ludwig_trainer.predict_probabilities makes them: binary [1 - P(positive), P(positive)]; a class Ludwig
    never saw (no training row) at probability 0."""
    probabilities = np.asarray(probabilities, dtype=float)
    if manifest["task"] == "binary":
        positive = probabilities.reshape(-1)
        return np.column_stack([1.0 - positive, positive])
    vocabulary = manifest["label_vocabulary"]
    zeros = np.zeros(len(probabilities))
    return np.column_stack([probabilities[:, vocabulary.index(c)] if c in vocabulary else zeros
                            for c in manifest["classes"]])


def delivered(raw: np.ndarray, manifest: dict) -> np.ndarray:
    """One network's outputs as predictions.csv gives them: class probabilities in ``classes`` order
    (``class_columns``: its own class order mapped), or a regression's values in the target's unit (its own
    target scaling). A fold ensemble's members each have their own (fold_ensemble.fold_manifest)."""
    if manifest["task"] == "regression":
        scaling = manifest["target_scaling"]
        return np.asarray(raw, dtype=float).reshape(-1) * scaling["std"] + scaling["mean"]
    return class_columns(raw, manifest)


def run(network: InferenceNetwork, batch: np.ndarray, tabular_inputs: np.ndarray | None = None) -> np.ndarray:
    """Ludwig's predictions for a uint8 N x S x S x 3 batch: pixels / 255 as float32 (as Ludwig's image
    decoding scales them), no gradients; back on the host. ``tabular_inputs``: a fused model's N x width
    inputs (data/tabular.matrix)."""
    device = network.pixel_mean.device
    pixels = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).to(torch.float32) / 255
    extra = None if tabular_inputs is None else torch.from_numpy(np.asarray(tabular_inputs, np.float32)).to(device)
    with torch.inference_mode():
        return network.predictions(network(pixels, extra)).float().cpu().numpy()


def image_pixels(path: str, side: int) -> tuple[np.ndarray, list[str]]:
    """The uint8 S x S x 3 pixels the model reads for an image file, and what was converted (image_check's
    rules: EXIF orientation, 8-bit RGB, then a bilinear resize to S x S; ValueError for an unreadable file).
    They are the pixels of the PNG copy training's check writes (lossless), or, for a plain RGB JPEG/PNG
    already S x S (no copy: Ludwig decoded the file itself, with torchvision), torchvision's decoding."""
    from PIL import Image

    from image_learner.data.image_check import check_image

    img, changes = check_image(path)
    if not changes and img.size == (side, side):
        from torchvision.io import ImageReadMode, decode_image, read_file

        return decode_image(read_file(path), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy(), changes
    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), changes


def _decoded(path: str, side: int):
    """(pixels, what was converted, None) or (None, None, why it cannot be read)."""
    try:
        return (*image_pixels(path, side), None)
    except ValueError as err:
        return None, None, str(err)


def decoded_batches(paths: list[str], side: int, batch_size: int, workers: int):
    """(start, [(pixels, changes, reason), ...]) per batch of ``paths`` (image_pixels; ``reason`` for a file
    that cannot be read), decoded in ``workers`` threads (Pillow's decoding and resizing release the GIL), the
    next batch while the caller's network runs this one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = None
        for start in range(0, len(paths), batch_size):
            submitted = (start, [pool.submit(_decoded, p, side) for p in paths[start:start + batch_size]])
            if pending:
                yield pending[0], [f.result() for f in pending[1]]
            pending = submitted
        if pending:
            yield pending[0], [f.result() for f in pending[1]]
