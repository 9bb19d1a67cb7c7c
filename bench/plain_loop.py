#!/usr/bin/env python3
"""The simplest honest alternative: a plain PyTorch + timm training loop, for comparison with the tool.

It trains on exactly the split a tool run used (its split.csv) with the tool's recipe: images resized
to SIZE (bilinear, as Ludwig's 'interpolate'), scaled to [0, 1], normalised with the backbone's own
mean/std, random horizontal flip, Adam (Ludwig's default: betas 0.9/0.999, no weight decay), gradient
norm clipped at 0.5 (Ludwig's default), cross-entropy, the epoch with the best validation balanced
accuracy kept (or the lowest validation loss: --select loss), constant or cosine learning rate.
Prints test metrics (computed by the tool's own metrics.py) and training images/s as JSON.

    python bench/plain_loop.py --run-dir TOOL_OUTPUT --image-zip images.zip --model tf_efficientnet_lite0 \
        --weights lite0.safetensors --size 96 --epochs 10 --batch-size 32 --lr 0.001 --seed 42
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from image_learner.evaluation import metrics  # noqa: E402
from image_learner.data.input_utils import read_output_csv  # noqa: E402


def decode_files(paths: list[str], size: int) -> torch.Tensor:
    """Decode once, resize to size x size as Ludwig's 'interpolate' does (bilinear, antialiased):
    uint8 N x 3 x H x W, the pre-decoded tensors the plain loops train on."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        out[i] = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0].round().clamp(0, 255).byte()
    return out


def load_images(zip_path: str, names: list[str], size: int) -> torch.Tensor:
    """decode_files on the members ``names`` of ``zip_path``."""
    with zipfile.ZipFile(zip_path) as archive, tempfile.TemporaryDirectory() as tmp:
        return decode_files([archive.extract(name, tmp) for name in names], size)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True, help="a tool run whose split.csv to reuse")
    p.add_argument("--image-zip", required=True)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default=None, help="local pretrained weights; none: random init")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="cosine: one epoch of linear warm-up, then cosine decay to 0 (as the tool's)")
    p.add_argument("--head-init", choices=("timm", "xavier"), default="timm",
                   help="classifier initialisation: timm's own, or Xavier-uniform with zero bias (Ludwig's)")
    p.add_argument("--select", choices=("balanced_accuracy", "loss"), default="balanced_accuracy",
                   help="the validation metric that picks the kept epoch (the tool's: balanced accuracy)")
    p.add_argument("--history", default=None, help="write per-epoch losses and accuracies to this CSV")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    split = read_output_csv(os.path.join(args.run_dir, "split.csv"))  # labels as written, never NaN
    classes = sorted(split["label"].unique())
    y = torch.tensor(split["label"].map({c: i for i, c in enumerate(classes)}).to_numpy())
    x = load_images(args.image_zip, split["image_file"].tolist(), args.size)
    parts = {name: torch.from_numpy(np.flatnonzero(split["split"].to_numpy() == name))
             for name in ("train", "validation", "test")}

    kwargs = {"num_classes": len(classes)}
    if args.weights:
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(args.weights)}
    model = timm.create_model(args.model, pretrained=bool(args.weights), **kwargs)
    if args.head_init == "xavier":
        torch.nn.init.xavier_uniform_(model.get_classifier().weight)
        torch.nn.init.zeros_(model.get_classifier().bias)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(parts["train"]) // args.batch_size)
    warmup = steps_per_epoch if args.epochs > 1 else 0
    decay_steps = max(1, args.epochs * steps_per_epoch - warmup)

    def lr_factor(step: int) -> float:
        if args.lr_schedule == "constant":
            return 1.0
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + np.cos(np.pi * min(step - warmup, decay_steps) / decay_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    def batches(index, shuffle):
        order = index[torch.randperm(len(index))] if shuffle else index
        for start in range(0, len(order), args.batch_size):
            rows = order[start:start + args.batch_size]
            yield (x[rows].float() / 255.0 - mean) / std, y[rows]

    def evaluate(index):
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(images) for images, _ in batches(index, False)])
        return F.cross_entropy(logits, y[index]).item(), logits.softmax(dim=1).numpy()

    best = (-float("inf"), None)
    train_seconds, seen, history = 0.0, 0, []
    for epoch in range(1, args.epochs + 1):
        model.train()
        started = time.perf_counter()
        for images, labels in batches(parts["train"], True):
            flip = torch.rand(len(images)) < 0.5
            images[flip] = images[flip].flip(-1)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            scheduler.step()
            seen += len(images)
        train_seconds += time.perf_counter() - started
        row = {"epoch": epoch}
        for part in ("validation", "test"):
            loss, proba = evaluate(parts[part])
            truth = y[parts[part]].numpy()
            row.update({f"{part}_loss": loss, f"{part}_accuracy": (proba.argmax(1) == truth).mean(),
                        f"{part}_balanced_accuracy": balanced_accuracy_score(truth, proba.argmax(1))})
        history.append(row)
        score = -row["validation_loss"] if args.select == "loss" else row["validation_balanced_accuracy"]
        if score > best[0]:  # strict: the first of equal epochs, as Ludwig
            best = (score, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    _, proba = evaluate(parts["test"])
    truth = np.asarray(classes)[y[parts["test"]].numpy()]
    result = metrics.split_metrics(truth, proba, classes)
    result["train_images_per_s"] = seen / train_seconds
    result["best_epoch"] = next(row["epoch"] for row in history if (
        -row["validation_loss"] if args.select == "loss" else row["validation_balanced_accuracy"]) == best[0])
    if args.history:
        pd.DataFrame(history).to_csv(args.history, index=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
