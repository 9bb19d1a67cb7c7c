"""glibc's allocator set up for training and predicting on the CPU (BENCHMARKS.md, "Host allocator").

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults every training step frees a batch's
activations, glibc gives most of that memory back to the kernel (heap trimming above 128 KiB free, a
threshold that moves with the sizes freed) and the next step faults it in again, page by page: on the CPU,
lite0 at 224 px, batch 32, 2 threads, 13 to 16 million minor page faults in a run of 3 epochs of 8 batches
and about a quarter of the process's CPU time in the kernel. A plain timm loop pays the same kind of cost
and gains about as much from these settings.

``tune`` keeps up to 1 GiB of freed memory in the heap (``M_TRIM_THRESHOLD``), grows the heap in steps of
256 MiB (``M_TOP_PAD``) and turns ``mmap`` off for single blocks (``M_MMAP_MAX`` 0): a block above glibc's
mmap threshold (at most 32 MiB) is otherwise mapped on ``malloc`` and unmapped on ``free``, and lite0's
largest activations at 224 px, batch 32, are 51-154 MB, so with only the first two settings the tool still
took 100,000-960,000 minor faults a training step (BENCHMARKS.md, "mmap off"). Now every block comes from
the heap and is reused by the next step. The price is resident memory kept between steps (BENCHMARKS.md
measures the peak). ``release`` hands the heap's free memory back between stages (``malloc_trim``), so what
training freed does not sit under the next stage's peak. Numbers do not change: only where memory comes from
does. Every process of a run calls ``tune`` first: the command line's, the DDP workers and the image check's
spawned workers (there each image's buffers were faulted in again: BENCHMARKS.md, "The image check's workers").

A user's own ``MALLOC_*`` variables or malloc ``GLIBC_TUNABLES`` win: nothing is changed then. Other C
libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
MIB = 1 << 20
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1024 * MIB), (M_TOP_PAD, 256 * MIB))


def user_has_chosen(environ=None) -> bool:
    """Whether the environment already sets glibc's malloc (``MALLOC_*_`` variables, malloc tunables)."""
    environ = os.environ if environ is None else environ
    return (any(name.startswith("MALLOC_") for name in environ)
            or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""))


def _c_function(name: str, argtypes: tuple):
    """The C library's ``name`` with its argument and int result types declared (so Python ints are passed
    as those C types, not guessed); None where there is no such function."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


def apply(settings) -> bool:
    """``mallopt(parameter, value)`` for each pair, unconditionally (``tune`` decides whether); True when
    glibc took every one. ctypes does not check a C int's range (2**32 wraps round to 0):
    tests/test_host_allocator.py keeps every value of SETTINGS inside one."""
    mallopt = _c_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return mallopt is not None and all(mallopt(parameter, value) == 1 for parameter, value in settings)


_tuned = False  # whether tune() applied SETTINGS in this process: release() acts only then


def tune(environ=None) -> bool:
    """Apply SETTINGS to this process's allocator; True when applied. Safe to call twice."""
    global _tuned
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_has_chosen(environ):
        return False
    _tuned = apply(SETTINGS)
    return _tuned


def release() -> bool:
    """Hand the free memory the tuned heap keeps back to the kernel (glibc's ``malloc_trim(0)``); call it
    where a stage ends. Does nothing (False) where ``tune`` did not apply SETTINGS."""
    malloc_trim = _c_function("malloc_trim", (ctypes.c_size_t,)) if _tuned else None
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
