#!/usr/bin/env python3
"""Peak RSS and step time of a bare timm training loop under one allocator setting (issue 22, CPU memory).

What a training step needs, without the tool: one fresh process imports torch and timm, builds the backbone
(random init), and trains a few steps on one fixed batch of random pixels (Adam), with glibc's allocator
- ``tool``: as the tool sets it (``host_allocator.SETTINGS``: no mmap for single blocks, freed memory kept);
- ``glibc``: glibc's defaults;
- ``unmapped``: every block of 128 KiB or more mapped and unmapped on its own (no reuse: the peak is about the
  live tensors plus the libraries; slow);
- ``never-trim``: the tool's settings with trimming off (``M_TRIM_THRESHOLD`` -1).
Prints one JSON line: RSS after the imports, peak RSS, each step's seconds, minor faults. Run once per setting
(they hold for a process's life):

    OMP_NUM_THREADS=2 python bench/step_memory.py --allocator tool [--model tf_efficientnet_lite0] [--size 224]
        [--batch 32] [--steps 8] [--layout channels_last]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from image_learner import host_allocator  # noqa: E402

KIB = 1 << 10


def set_allocator(kind: str) -> None:
    """Apply ``kind`` before anything large is allocated."""
    settings = {"tool": host_allocator.SETTINGS, "glibc": (),
                "unmapped": ((host_allocator.M_MMAP_THRESHOLD, 128 * KIB), (host_allocator.M_TRIM_THRESHOLD, 128 * KIB)),
                "never-trim": (*[s for s in host_allocator.SETTINGS if s[0] != host_allocator.M_TRIM_THRESHOLD],
                               (host_allocator.M_TRIM_THRESHOLD, -1))}[kind]
    if settings and not host_allocator.apply(settings):
        raise SystemExit(f"mallopt refused one of {settings}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--allocator", choices=("tool", "glibc", "unmapped", "never-trim"), required=True)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if host_allocator.user_has_chosen():
        raise SystemExit("unset the MALLOC_* variables: this script sets the allocator itself")
    set_allocator(a.allocator)

    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = timm.create_model(a.model, pretrained=False, num_classes=7).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(a.batch, 3, a.size, a.size)
    if a.layout == "channels_last":
        x, model = x.contiguous(memory_format=torch.channels_last), model.to(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (a.batch,))
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    steps = []
    for _ in range(a.steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        steps.append(round(time.perf_counter() - started, 3))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"allocator": a.allocator, "model": a.model, "size": a.size, "batch": a.batch, "layout": a.layout,
                      "rss_after_imports_gib": round(after_imports, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
                      "step_s": steps, "minor_faults": usage.ru_minflt, "system_cpu_s": round(usage.ru_stime, 1)}))


if __name__ == "__main__":
    main()
