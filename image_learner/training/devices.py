"""Device and numeric precision: which hardware trains and predicts, and whether in mixed precision.

``--device auto|cpu|cuda`` and ``--mixed-precision auto|on|off``; ``choose`` is the pure rule, ``select``
applies it to this process. How Ludwig 0.17.10 does it, and so how we steer it without patching it:
- device: ``ludwig.utils.torch_utils.get_torch_device`` returns "cuda" whenever torch sees a GPU, and
  Ludwig calls it while its modules are imported; its own switch, ``LudwigModel(gpus=-1)``, only sets
  ``CUDA_VISIBLE_DEVICES=""``. CUDA reads that variable once, when it is first initialised, so "cpu"
  sets it here before anything touches CUDA (the command line calls ``select`` first thing).
- mixed precision: ``trainer.use_mixed_precision`` wraps the forward pass and loss in
  ``torch.amp.autocast("cuda")`` without a dtype, i.e. torch's autocast default for CUDA (float16), and
  scales the loss with ``torch.amp.GradScaler("cuda")``; on a CPU Ludwig silently turns it off. Where
  the GPU supports bfloat16 (Ampere and newer) ``autocast_default`` makes it torch's autocast default
  while Ludwig trains: no float16 overflow, and the loss scaler is then harmless. Older GPUs keep
  float16 with Ludwig's loss scaling. Ludwig predicts and evaluates in float32 either way.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from image_learner.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISION = ("auto", "on", "off")


class OutOfMemory(MemoryError):
    """Training or prediction ran out of (GPU or main) memory; the message says what to lower."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" or "cuda"
    mixed_precision: bool


def choose(device: str, mixed_precision: str, visible_gpus: int) -> DeviceChoice:
    """The rule: auto = CUDA when a GPU is visible; mixed precision auto = on for CUDA, off on CPU.
    Asking for what cannot be had is an input error, never a silent fallback."""
    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if mixed_precision not in MIXED_PRECISION:
        raise InputError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, not {mixed_precision!r}")
    if device == "cuda" and visible_gpus < 1:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise InputError("--device cuda: no CUDA GPU is visible to PyTorch"
                         + (f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else "")
                         + "; run on a GPU node, or use --device auto (trains on the CPU when there is no GPU)")
    use = "cuda" if visible_gpus > 0 and device != "cpu" else "cpu"
    if mixed_precision == "on" and use == "cpu":
        raise InputError("--mixed-precision on needs a CUDA GPU (Ludwig's mixed precision is CUDA autocast) but "
                         "this run uses the CPU; use --mixed-precision auto or off")
    return DeviceChoice(use, mixed_precision == "on" or (mixed_precision == "auto" and use == "cuda"))


def select(device: str = "auto", mixed_precision: str = "auto") -> DeviceChoice:
    """``choose`` for this process. For "cpu" the GPUs are hidden from CUDA before torch looks at them."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu" and visible:
        # Something initialised CUDA before the variable was set: Ludwig would still train on the GPU.
        raise RuntimeError("--device cpu: CUDA was initialised before the GPUs could be hidden; "
                           "set CUDA_VISIBLE_DEVICES='' before starting the process")
    return choose(device, mixed_precision, visible)


def autocast_dtype_name() -> str:
    """The dtype mixed precision runs in on this machine's GPU: bfloat16 where supported, else float16."""
    import torch

    if not hasattr(torch, "set_autocast_dtype"):  # torch < 2.4: Ludwig's autocast stays at float16
        return "float16"
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"


@contextmanager
def autocast_default(dtype_name: str | None, device_type: str = "cuda"):
    """Make ``dtype_name`` torch's autocast default for ``device_type`` inside the block (Ludwig's
    ``autocast("cuda")`` passes no dtype, so it uses this one), restoring the previous default after."""
    if dtype_name is None:
        yield
        return
    import torch

    previous = torch.get_autocast_dtype(device_type)
    torch.set_autocast_dtype(device_type, getattr(torch, dtype_name))
    try:
        yield
    finally:
        torch.set_autocast_dtype(device_type, previous)


def describe(mixed_precision_dtype: str | None = None) -> str:
    """What actually runs, for the log, run_summary.json and the report."""
    import torch

    if torch.cuda.is_available():
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    return f"{where}, " + (f"{mixed_precision_dtype} mixed precision" if mixed_precision_dtype else "float32")


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA or CPU allocation failure (torch raises RuntimeErrors with this text for both)."""
    import torch

    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err).lower() or "can't allocate memory" in str(err)))


def oom_message(stage: str, device: str, batch_size: int, image_size: int | None,
                suggest_mixed_precision: bool = False) -> str:
    """What ran out, at which sizes, and what to lower (activations grow with the batch and with the
    square of the image side)."""
    memory = "GPU memory" if device.startswith("cuda") else "memory"
    size = f"image size {image_size} px" if image_size else "the model's image size"
    lower = [f"--batch-size (e.g. {max(1, batch_size // 2)})"]
    if image_size:
        lower.append(f"--image-size (e.g. {max(32, (image_size * 3 // 4) // 32 * 32)})")
    hint = f"lower {' or '.join(lower)}"
    if device.startswith("cuda") and suggest_mixed_precision:
        hint += ", or use --mixed-precision on (about half the activation memory)"
    elif not device.startswith("cuda"):
        hint += ", or give the job more memory"
    return f"out of {memory} while {stage} on {device} at batch size {batch_size} and {size}: {hint}"
