"""Does one --distributed ddp step on 2 x B images equal one single-process step on the same 2B images?
For a model without BatchNorm (timm test_vit, LayerNorm) it should; with BatchNorm (test_efficientnet) each
rank normalises with the statistics of its own B images and DDP copies rank 0's running statistics to the
others, so it cannot. The same probe as tests/test_data_parallel.py (tests/ddp_step_probe.py: 2B = 8 PNGs,
32 px, plain SGD, 2 gloo CPU processes at lr vs one process at 2 lr, Ludwig's linear scaling).

    python bench/ddp_batchnorm.py [test_efficientnet test_vit ...]

Needs the ``distributed`` extra. Not a test: numbers go to BENCHMARKS.md by hand."""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from image_learner.training import data_parallel  # noqa: E402
import test_data_parallel as probe  # noqa: E402  the test's table, runner and weight reader


def compare(model: str, base: Path) -> str:
    table = probe._table(base, 2 * probe.B)
    probe._run(data_parallel.launch_command(2, [probe.PROBE, "ddp", table, str(base / "ddp"), str(probe.B),
                                                str(probe.LR), "1", model]), base / "ddp")
    probe._run([sys.executable, probe.PROBE, "local", table, str(base / "single"), str(2 * probe.B),
                str(2 * probe.LR), "1", model], base / "single")
    ddp, other, single, start = (probe._weights(base / p) for p in ("ddp/rank0.safetensors", "ddp/rank1.safetensors",
                                                                    "single/rank0.safetensors",
                                                                    "single/start0.safetensors"))
    learned = [k for k in ddp if "running_" not in k and "num_batches" not in k]  # not BatchNorm's buffers
    moved = max(float(np.abs(single[k] - start[k]).max()) for k in learned)
    diff = {k: float(np.abs(ddp[k] - single[k]).max()) for k in learned}
    return (f"| {model} | {sum('running_mean' in k for k in ddp)} | {len(learned)} | {moved:.2g} | "
            f"{max(diff.values()):.2g} | {sum(v > 1e-6 for v in diff.values())} | "
            f"{all(np.array_equal(ddp[k], other[k]) for k in ddp)} |")


if __name__ == "__main__":
    print("| model | BatchNorm layers | learned tensors | the step moved them by up to | DDP vs 1 process, "
          "largest difference | tensors differing > 1e-6 | ranks identical |")
    print("|---|---|---|---|---|---|---|")
    for name in sys.argv[1:] or ["test_efficientnet", "test_vit"]:
        started = time.time()
        with tempfile.TemporaryDirectory() as scratch:
            print(compare(name, Path(scratch)), f"<!-- {time.time() - started:.0f} s -->", flush=True)
