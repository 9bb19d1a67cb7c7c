"""``--export-onnx``: the trained network as ``model.onnx`` in the model ZIP, for use outside Image Learner.

The graph runs from the preprocessed image to exactly what predictions.csv holds: the encoder's own
normalisation (the backbone's mean/std) is inside, and so are the last steps prediction takes after
Ludwig (the classes in predictions.csv's column order, a class with no training row at probability 0;
a binary model's [P(negative), P(positive)]; a regression's value in the target's unit). It is exported
from the saved model (the files of the ZIP), so it is the model predict loads. Input: ``INPUT_NAME``,
float32, N×3×S×S (S: the training image size), RGB in [0, 1], made as ``image_tensor`` makes it.

Prediction never loads this file (model_archive only caps its size): a model ZIP stays data.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from image_learner.errors import InputError

from image_learner.model.model_archive import ONNX_FILE  # one name for the file
INPUT_NAME = "image"
OPSET = 17


def check_available() -> None:
    """Before any work: the exporter needs the onnx package (the ``onnx`` extra)."""
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise InputError("--export-onnx needs the onnx package: pip install 'image-learner[onnx]'") from err


def output_name(task: str) -> str:
    return "value" if task == "regression" else "probabilities"


def describe(manifest: dict) -> str:
    """The file's input and output in words (the model card's line)."""
    side, task = manifest["image_size"], manifest["task"]
    out = ("N×1 predicted values in the target's unit" if task == "regression" else
           f"N×{len(manifest['classes'])} class probabilities in the classes' order above")
    return (f"input {INPUT_NAME!r}: float32 N×3×{side}×{side}, RGB scaled to [0, 1] after a bilinear resize to "
            f"{side}×{side} (the backbone's normalisation is inside the graph); output {output_name(task)!r}: "
            f"{out}; ONNX opset {OPSET}")


def image_tensor(paths: list[str], image_size: int) -> np.ndarray:
    """The ONNX input for image files, as training and predict prepare them (data.image_check: EXIF
    orientation, 8-bit RGB, then a bilinear resize to the model's square size): float32 N×3×S×S in [0, 1],
    from inference_network.image_pixels (so a plain JPEG already S×S is decoded as Ludwig decoded it)."""
    from image_learner.model.inference_network import image_pixels  # the one decoder of training's pixels

    batch = [image_pixels(path, image_size)[0].astype(np.float32).transpose(2, 0, 1) / 255.0 for path in paths]
    return np.stack(batch) if batch else np.zeros((0, 3, image_size, image_size), np.float32)


def _class_index(manifest: dict) -> list[int]:
    """For each class of predictions.csv's order, its column in Ludwig's output (its vocabulary order);
    a class Ludwig never saw points one past the end, at a column of zeros."""
    vocabulary = manifest["label_vocabulary"]
    return [vocabulary.index(c) if c in vocabulary else len(vocabulary) for c in manifest["classes"]]


def network(ecd, manifest: dict):
    """A torch module: the Ludwig ECD model ``ecd`` from the image tensor to predictions.csv's numbers."""
    import torch

    from image_learner.training.ludwig_config import IMAGE_FEATURE, LABEL_FEATURE

    task = manifest["task"]

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ecd = ecd
            if task == "multiclass":
                self.register_buffer("index", torch.tensor(_class_index(manifest), dtype=torch.long))
            if task == "regression":
                scaling = manifest["target_scaling"]
                self.mean, self.std = float(scaling["mean"]), float(scaling["std"])
            # the training's temperature (trust.calibrate): predictions.csv holds softmax(log p / T)
            self.temperature = (manifest.get("trust") or {}).get("temperature")

        def forward(self, image):
            outputs = self.ecd.outputs_to_predictions(self.ecd({IMAGE_FEATURE: image}))[LABEL_FEATURE]
            if task == "regression":
                return outputs["predictions"].reshape(-1, 1) * self.std + self.mean
            probabilities = outputs["probabilities"]
            if task == "binary":
                positive = probabilities.reshape(-1)
                probabilities = torch.stack([1.0 - positive, positive], dim=1)
            else:
                padded = torch.cat([probabilities, torch.zeros_like(probabilities[:, :1])], dim=1)
                probabilities = padded.index_select(1, self.index)
            if self.temperature is None:
                return probabilities
            # calibration.apply_temperature's rule: p clipped to [1e-12, 1] before the log
            return torch.softmax(torch.log(probabilities.clamp(1e-12, 1.0)) / float(self.temperature), dim=1)

    return Network().cpu().eval()


def export(model_dir: str, dest: str) -> dict:
    """Load the model training just saved in ``model_dir`` (offline; its manifest written) and write
    ``dest``; returns {"description": ...} for the model card."""
    import onnx
    import torch

    from image_learner.model.model_archive import offline_hub  # noqa: F811
    from image_learner.model.model_manifest import MANIFEST
    from image_learner.training import ludwig_trainer

    with open(os.path.join(model_dir, MANIFEST), encoding="utf-8") as handle:
        manifest = json.load(handle)
    with offline_hub():
        model = ludwig_trainer.load_model(model_dir)
    module = network(model.model, manifest)
    side = manifest["image_size"]
    example = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    name = output_name(manifest["task"])
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False): the torch.export-based default needs onnxscript too;
        # this one announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*squeeze operation.*")
        torch.onnx.export(module, (example,), dest, dynamo=False, input_names=[INPUT_NAME], output_names=[name],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, name: {0: "batch"}}, opset_version=OPSET)
    onnx.checker.check_model(dest)
    return {"description": describe(manifest)}
