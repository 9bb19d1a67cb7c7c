"""The weights of a model ZIP (``model_weights.safetensors``): exactly the tensors the validated config
describes, and no more bytes than they take.

The network is first built on the meta device (``inference_network.expected_tensors``: shapes without
memory, under Ludwig's names; tests/test_inference_network.py holds them to Ludwig's own ECD); the
safetensors header must then list exactly its tensor names, shapes and dtypes. Only the header is
read (its size capped), never the tensors, so whatever predict allocates later is bounded by the uploaded
file, and the file by what the architecture implies (parameters x dtype size + a header).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from image_learner.errors import InputError

WEIGHTS = "model_weights.safetensors"
# A billion values is 4 GB of float32 weights, held twice while Ludwig loads them (model + file): the
# most a Galaxy node can be asked for by an uploaded file. Every backbone the tool form offers (at most
# caformer_b36, 93 M), vit_huge (631 M) and convnext_xxlarge (843 M) fit; vit_7b_patch16_dinov3 (6.7 B) does not.
MAX_PARAMETERS = 1_000_000_000
# The header is JSON of ~150 bytes per tensor: 4 MiB holds 25,000 tensors (caformer_s18: 202, vit_huge: 390).
MAX_HEADER_BYTES = 4 * 1024**2
WEIGHT_PREFIXES = ("input_features.module_dict.", "output_features.module_dict.")  # Ludwig's ECD feature modules
# torch dtype -> safetensors dtype
DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
          "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
          "torch.uint8": "U8", "torch.bool": "BOOL"}


@dataclass(frozen=True)
class ExpectedTensors:
    """What the weights file must hold: name -> (safetensors dtype, shape), and the groups of names that
    share one tensor (tied weights: safetensors stores one name of each)."""

    tensors: dict[str, tuple[str, list[int]]]
    tied: list[list[str]]
    data_bytes: int  # the tensor data the file holds when complete
    parameters: int  # values in the model, each tied tensor once

    def max_file_bytes(self) -> int:
        """The largest weights file this model can have: its data, the header's length field and header."""
        return self.data_bytes + 8 + MAX_HEADER_BYTES


def expected_tensors(state_dict: dict) -> ExpectedTensors:
    """ExpectedTensors of a (meta-device) state dict whose tied tensors are one object (keep_vars=True);
    refuses a model above MAX_PARAMETERS before anything is allocated."""
    groups: dict[int, list[str]] = {}
    for name, tensor in state_dict.items():
        groups.setdefault(id(tensor), []).append(name)
    tensors, data_bytes, parameters = {}, 0, 0
    for names in groups.values():
        tensor = state_dict[names[0]]
        dtype = DTYPES.get(str(tensor.dtype))
        if dtype is None:
            raise InputError(f"the model its config describes has a tensor of dtype {tensor.dtype} ({names[0]}), "
                             "which an Image Learner model never has")
        for name in names:
            tensors[name] = (dtype, list(tensor.shape))
        data_bytes += tensor.numel() * tensor.element_size()
        parameters += tensor.numel()
    if parameters > MAX_PARAMETERS:
        raise InputError(f"the model its config describes has {parameters:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} this tool loads")
    return ExpectedTensors(tensors, [names for names in groups.values() if len(names) > 1], data_bytes, parameters)


def read_header(path: str, file_name: str = WEIGHTS) -> dict:
    """The safetensors header as a dict, its length capped; the layout (offsets tiling the data, nothing
    else in the file) is checked by safetensors itself, which reads no tensor either."""
    from safetensors import SafetensorError, safe_open

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > min(MAX_HEADER_BYTES, size - 8):
            raise InputError(f"{file_name} is not a valid safetensors file (its header length is "
                             f"{length}, expected at most {min(MAX_HEADER_BYTES, max(size - 8, 0))})")
        raw = handle.read(length)
    try:
        with safe_open(path, framework="np"):
            pass
        header = json.loads(raw)
    except (SafetensorError, OSError, ValueError) as err:  # json.JSONDecodeError, UnicodeDecodeError included
        raise InputError(f"{file_name} is not a valid safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise InputError(f"{file_name} is not a valid safetensors file (its header is not an object)")
    return header


def check_weights(path: str, expected: ExpectedTensors, file_name: str = WEIGHTS) -> None:
    """The header lists exactly the expected tensors (one name of each tied group), each with its shape
    and dtype; the file is no larger than they need. ``file_name``: the file's name in messages (a fold's weights,
    fold_ensemble)."""
    if os.path.getsize(path) > expected.max_file_bytes():
        raise InputError(f"{file_name} has {os.path.getsize(path):,} bytes, more than the "
                         f"{expected.max_file_bytes():,} the model its config describes can take")
    header = read_header(path, file_name)
    metadata = header.pop("__metadata__", None) or {}
    saved = {name: (entry.get("dtype"), entry.get("shape")) for name, entry in header.items()
             if isinstance(entry, dict)}
    foreign = sorted(name for name in saved if not name.startswith(WEIGHT_PREFIXES))
    if foreign:
        raise InputError(f"{file_name} holds tensors of no Image Learner model ({', '.join(foreign[:3])})")
    misfit = "does not fit the model its config describes"
    extra = sorted(set(saved) - set(expected.tensors))
    if extra:
        raise InputError(f"{file_name} {misfit}: it holds {len(extra)} tensor(s) the model has not ({extra[0]} …)")
    tied = {name: names for names in expected.tied for name in names}
    missing = sorted(n for n in expected.tensors if n not in saved and not any(m in saved for m in tied.get(n, ())))
    if missing:
        raise InputError(f"{file_name} {misfit}: {len(missing)} of its {len(expected.tensors)} tensors are "
                         f"missing ({missing[0]} …)")
    doubled = [names for names in expected.tied if sum(n in saved for n in names) > 1]
    if doubled:
        raise InputError(f"{file_name} {misfit}: the tied tensors {', '.join(doubled[0])} are stored more than once")
    for name, (dtype, shape) in saved.items():
        wanted_dtype, wanted_shape = expected.tensors[name]
        if shape != wanted_shape:
            raise InputError(f"{file_name} {misfit}: {name} has shape {shape}, expected {wanted_shape}")
        if dtype != wanted_dtype:
            raise InputError(f"{file_name} {misfit}: {name} has dtype {dtype}, expected {wanted_dtype}")
    # safetensors' own metadata: only which name a tied tensor was stored under
    if not (isinstance(metadata, dict) and all(tied.get(k) is not None and v in tied[k] for k, v in metadata.items())):
        raise InputError(f"{file_name}: its __metadata__ is {str(metadata)[:80]!r}, expected only tied tensor names")
