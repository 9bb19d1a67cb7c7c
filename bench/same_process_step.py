#!/usr/bin/env python3
"""The tool's training step against a raw timm step in ONE process, alternated (issue 22, CPU).

Between fresh processes the raw loop and the tool each vary by about 10% (BENCHMARKS.md), as much as the gap
between them. Here both run in the same process, on the same fixed batch of random pixels, alternately: at the
first epoch's start (a Ludwig callback), the tool's own ``Trainer.train_step`` (Ludwig's ECD around our timm
encoder, our trainer's changes) and a raw step (the same timm backbone with its classifier, channels-last,
Adam, gradient clipping at 0.5, as bench/throughput.py's raw loop). Then the tool trains its epochs on
``--table`` as in bench/gpu_ablation.py, whose epoch timer says what a whole step of the tool's loop costs
(reading the batch included). Prints the median step of each (the first two of each dropped) and the ratio.

    OMP_NUM_THREADS=2 python bench/same_process_step.py --table SET/table.csv [--model tf_efficientnet_lite0]
        [--size 224] [--batch 32] [--steps 10] [--epochs 3]
SET: a table of gpu_ablation.py's ``prepare`` (image_path, label, split).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="steps of each, alternated")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    a.precision = "float32"

    from image_learner import host_allocator

    host_allocator.tune()  # as the command line does
    import pandas as pd
    import timm
    import torch
    import torch.nn.functional as F
    from ludwig.callbacks import Callback

    import gpu_ablation

    torch.set_num_threads(a.threads)
    table = pd.read_csv(a.table)
    n_classes = table.label.nunique()
    seconds: dict[str, list[float]] = {"tool": [], "raw": []}

    batch_marks: list[tuple[str, float]] = []  # ("start"|"end", perf_counter) of the loop's batches after the first epoch

    class AlternatedSteps(Callback):
        def __init__(self):
            self.done = False

        def on_batch_start(self, trainer, progress_tracker, save_path):
            if progress_tracker.epoch >= 1:
                batch_marks.append(("start", time.perf_counter()))

        def on_batch_end(self, trainer, progress_tracker, save_path, sync_step=True):
            if progress_tracker.epoch >= 1 or batch_marks:
                batch_marks.append(("end", time.perf_counter()))

        def on_epoch_start(self, trainer, progress_tracker, save_path):
            if self.done:
                return
            self.done = True
            torch.manual_seed(0)
            x = torch.rand(a.batch, 3, a.size, a.size)
            y = torch.randint(0, n_classes, (a.batch,))
            image, label = next(iter(trainer.model.input_features)), next(iter(trainer.model.output_features))
            raw = timm.create_model(a.model, pretrained=False, num_classes=n_classes)
            raw = raw.to(memory_format=torch.channels_last)
            optimizer = torch.optim.Adam(raw.parameters(), lr=1e-3)
            mean = torch.tensor(raw.pretrained_cfg["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(raw.pretrained_cfg["std"]).view(1, 3, 1, 1)

            def raw_step():
                loss = F.cross_entropy(raw(((x - mean) / std).contiguous(memory_format=torch.channels_last)), y)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(raw.parameters(), 0.5)
                optimizer.step()
                return loss.item()

            def tool_step():  # what Trainer._train_loop runs for a batch, the batch's reading aside
                loss, _, _ = trainer.train_step({image: x}, {label: y}, should_step=True)
                return loss.detach().item()

            for k in range(a.steps):
                for name, step in (("tool", tool_step), ("raw", raw_step))[::1 if k % 2 == 0 else -1]:
                    started = time.perf_counter()
                    step()
                    seconds[name].append(time.perf_counter() - started)

    result = gpu_ablation.run_tool(table, a, gpu_ablation.STACK["ours"], callbacks=(AlternatedSteps(),))
    median = {name: statistics.median(values[2:]) for name, values in seconds.items()}
    steps_per_epoch = -(-int((table.split == 0).sum()) // a.batch)
    loop = [s / steps_per_epoch for s in result["seconds"]]
    print(f"{a.model} {a.size} px batch {a.batch}, {a.threads} threads, one process:")
    print(f"  step alone, median of {a.steps - 2}: tool {median['tool']:.3f} s, raw {median['raw']:.3f} s, "
          f"raw / tool {median['raw'] / median['tool']:.3f}")
    print(f"  every step: tool {[round(s, 3) for s in seconds['tool']]}, raw {[round(s, 3) for s in seconds['raw']]}")
    print(f"  the tool's whole loop, seconds a step by epoch after the first (reading the batch included): "
          f"{[round(s, 3) for s in loop[1:]]}")
    inside = [b - s for (k, s), (j, b) in zip(batch_marks, batch_marks[1:]) if k == "start" and j == "end"]
    between = [s - b for (k, b), (j, s) in zip(batch_marks, batch_marks[1:]) if k == "end" and j == "start"]
    print(f"  of which, median: batch start to end (read, to tensors, train_step, scheduler, progress bar) "
          f"{statistics.median(inside):.3f} s; end to the next start {statistics.median(between) * 1e3:.1f} ms "
          f"(evaluations excluded: the epochs' last batches)", flush=True)


if __name__ == "__main__":
    main()
