"""Pictures for the report: thumbnails of misclassified test images (regression: the largest errors)
and Grad-CAM saliency overlays, as small JPEG data URIs (the report stays one file). Each function
says why when it cannot apply."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pandas as pd
from PIL import Image

THUMB_SIDE = 112
MAX_GALLERY = 24
MAX_SALIENCY = 6


def data_uri(img: Image.Image, side: int = THUMB_SIDE) -> str:
    thumb = img.convert("RGB")
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_path(images_dir: str, row) -> str | None:
    path = os.path.join(images_dir, row["image_file"])
    return path if os.path.isfile(path) else None


def misclassified_gallery(predictions: pd.DataFrame, classes: list[str], images_dir: str | None):
    """(items, reason): the most confident wrong test predictions first."""
    if not images_dir or not os.path.isdir(images_dir):
        return [], "the images are not available (report rebuilt from a finished run's files)"
    test = predictions[predictions["split"] == "test"]
    wrong = test[test["true_label"].astype(str) != test["predicted_label"].astype(str)].copy()
    if wrong.empty:
        return [], "no test image was misclassified" if len(test) else "there is no test split"
    wrong["confidence"] = [row[f"prob_{row['predicted_label']}"] for _, row in wrong.iterrows()]
    items = []
    for _, row in wrong.sort_values("confidence", ascending=False).head(MAX_GALLERY).iterrows():
        path = _image_path(images_dir, row)
        if path:
            with Image.open(path) as img:
                items.append({"src": data_uri(img), "image": row["image"], "true": row["true_label"],
                              "predicted": row["predicted_label"], "confidence": float(row["confidence"]),
                              "p_true": float(row[f"prob_{row['true_label']}"])
                              if f"prob_{row['true_label']}" in row else None})
    return items, None if items else "the misclassified images could not be read"


def _feature_module(backbone):
    """The module whose output is the backbone's last feature map (timm's feature_info)."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        return None
    name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    return dict(backbone.named_modules()).get(name)


def _colourise(cam: np.ndarray) -> np.ndarray:
    """A blue→red heat map (H x W x 3 uint8) from values in [0, 1], no matplotlib needed."""
    r = np.clip(1.5 - np.abs(4 * cam - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * cam - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * cam - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def largest_errors_gallery(predictions: pd.DataFrame, images_dir: str | None):
    """(items, reason), regression: the test images with the largest absolute error first."""
    if not images_dir or not os.path.isdir(images_dir):
        return [], "the images are not available (report rebuilt from a finished run's files)"
    test = _regression_test_rows(predictions)
    if test.empty:
        return [], "there is no test split with true values"
    items = []
    for _, row in test.sort_values("abs_error", ascending=False).head(MAX_GALLERY).iterrows():
        path = _image_path(images_dir, row)
        if path:
            with Image.open(path) as img:
                items.append({"src": data_uri(img), "image": row["image"], "true": float(row["true_value"]),
                              "predicted": float(row["predicted_value"]), "error": float(row["abs_error"])})
    return items, None if items else "the test images could not be read"


def _regression_test_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    test = predictions[predictions["split"] == "test"]
    if "true_value" not in test:
        return test.iloc[0:0].assign(abs_error=[])
    predicted = pd.to_numeric(test["predicted_value"], errors="coerce")
    error = predicted - pd.to_numeric(test["true_value"], errors="coerce")
    return test.assign(abs_error=error.abs()).dropna(subset=["abs_error"])


def _saliency_rows(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
    """Classification: up to half right and the rest wrong test predictions; regression: the largest
    and the smallest absolute errors, half each."""
    half = MAX_SALIENCY // 2
    if task == "regression":
        test = _regression_test_rows(predictions).sort_values("abs_error", ascending=False)
        return test if len(test) <= MAX_SALIENCY else pd.concat([test.head(half), test.tail(MAX_SALIENCY - half)])
    test = predictions[predictions["split"] == "test"]
    right = test[test["true_label"].astype(str) == test["predicted_label"].astype(str)]
    wrong = test[test["true_label"].astype(str) != test["predicted_label"].astype(str)]
    return pd.concat([wrong.head(MAX_SALIENCY - min(half, len(right))), right.head(half)])


def _saliency_item(row, task: str) -> dict:
    if task == "regression":
        return {"true": float(row["true_value"]), "predicted": float(row["predicted_value"]),
                "error": float(row["abs_error"])}
    return {"true": row["true_label"], "predicted": row["predicted_label"],
            "confidence": float(row[f"prob_{row['predicted_label']}"])}


def _neutral_tabular_inputs(ecd, device) -> dict:
    """Zeros for a fused model's tabular features (--tabular-columns: the training mean of a number, no
    category slot set). Under the concat combiner without hidden layers (ludwig_config) the head is linear
    in the concatenation, so a tabular value only shifts the logits: the gradient with respect to the
    image's feature maps, and so the Grad-CAM map, is the same whatever values are fed here."""
    import torch

    return {name: torch.zeros((1, *feature.input_shape), device=device)
            for name, feature in ecd.input_features.items() if name != "image_path"}


def saliency_network(model):
    """What Grad-CAM needs of a trained model: a torch module with ``backbone`` (the timm model) whose call
    on N x 3 x S x S pixels in [0, 1] returns Ludwig's logits of the output. Predict's network
    (model/inference_network.py) is one; training's LudwigModel is wrapped around its ECD."""
    if hasattr(model, "backbone"):
        return model
    import torch

    class LudwigLogits(torch.nn.Module):
        def __init__(self, ecd):
            super().__init__()
            self.ecd = ecd
            self.backbone = ecd.input_features.get("image_path").encoder_obj.model

        def forward(self, images):
            # a fused model's tabular inputs at zero (_neutral_tabular_inputs: the map does not depend on them)
            return self.ecd({"image_path": images, **_neutral_tabular_inputs(self.ecd, images.device)})[
                "label::logits"]

    return LudwigLogits(model.model)


def grad_cam_overlays(predictions: pd.DataFrame, classes: list[str], images_dir: str | None, ludwig_model,
                      image_size: int, task: str):
    """(items, reason): Grad-CAM on the backbone's last feature map for a few test images (see
    _saliency_rows), for the predicted class, or for a regression model the predicted value itself
    (the gradient of the number output: red regions raised the prediction). ``ludwig_model``: training's
    LudwigModel or predict's network (``saliency_network``)."""
    if ludwig_model is None:
        return [], "the trained model is not loaded (report rebuilt from a finished run's files)"
    if not images_dir or not os.path.isdir(images_dir):
        return [], "the images are not available (report rebuilt from a finished run's files)"
    import torch

    ecd = saliency_network(ludwig_model)
    # Wherever the model is (the GPU after training or predicting there): inputs go to it,
    # results come back to the host before NumPy.
    device = next(ecd.parameters()).device
    module = _feature_module(ecd.backbone)
    if module is None:
        return [], "this backbone does not expose its feature maps (no timm feature_info)"
    chosen = _saliency_rows(predictions, task)
    if chosen.empty:
        return [], "there is no test split" + (" with true values" if task == "regression" else "")
    captured = {}
    hook = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("maps", out))
    items = []
    was_training = ecd.training
    ecd.eval()
    try:
        for _, row in chosen.iterrows():
            path = _image_path(images_dir, row)
            if not path:
                continue
            with Image.open(path) as img:
                picture = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
            x.requires_grad_(True)  # gradients flow even through a frozen backbone
            logits = ecd(x).reshape(-1)
            if task == "regression":  # the number output is a single "logit": the predicted value
                score = logits[0]
            else:
                k = classes.index(str(row["predicted_label"]))
                score = logits[k] if task != "binary" else (logits[0] if k == 1 else -logits[0])
            maps = captured["maps"]
            if maps.ndim != 4:
                return [], f"the backbone's last feature map is not spatial (shape {tuple(maps.shape)})"
            grads, = torch.autograd.grad(score, maps)
            cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1))[0]
            cam = cam.detach().float().cpu().numpy()
            cam = cam / cam.max() if cam.max() > 0 else cam
            heat = Image.fromarray(_colourise(cam)).resize(picture.size, Image.Resampling.BILINEAR)
            overlay = Image.blend(picture, heat, alpha=0.45)
            items.append({"src": data_uri(picture, 160), "overlay": data_uri(overlay, 160), "image": row["image"],
                          **_saliency_item(row, task)})
    finally:
        hook.remove()
        ecd.train(was_training)
    return items, None if items else "no test image could be read"
