#!/usr/bin/env python3
"""Does Ludwig 0.17.10's Ray backend synchronise its training workers? A probe, not a test (Ray is not a
dependency of the tool; this needs Ray and Dask installed beside it, see below).

Trains timm's tiny ``test_vit`` (32 px, LayerNorm only, no dropout, plain SGD, no augmentation) on 40 demo
images with ``backend: {type: ray}`` and 2 Ray Train workers of 0.5 CPU each (1 CPU each starves Ray Data's
decoding on 2 CPUs, as the issue found). A Ludwig callback in each worker saves that worker's live weights
when its training ends, and counts the batches it trained on. Data-parallel training would leave both
workers with identical weights; separate copies on separate shards leave them different.

    python -m venv /tmp/ray-venv && echo "$(python -c 'import site;print(site.getsitepackages()[0])')" \\
        > /tmp/ray-venv/lib/python3.12/site-packages/project_env.pth      # (the project's packages)
    /tmp/ray-venv/bin/python -m pip install 'ray[data,default,serve,tune]==2.60.*' 'dask[dataframe]>=2026.1.2'
    /tmp/ray-venv/bin/python bench/ray_sync_probe.py [--epochs 2]

Everything Ray writes (its session folder, Ray Train's results, which default to ~/ray_results) goes to a
temporary folder that is removed at the end; the local Ray cluster is shut down.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def demo_table(folder: str, rows: int = 40):
    """The first ``rows`` demo images unpacked (absolute paths), 4 of them validation and 4 test."""
    import pandas as pd

    meta = pd.read_csv(os.path.join(ROOT, "test-data", "ham10000_demo_metadata.csv"))
    meta = meta.groupby("label", group_keys=False).head(rows // 7 + 1).head(rows)
    with zipfile.ZipFile(os.path.join(ROOT, "test-data", "ham10000_demo_images.zip")) as archive:
        for name in meta["image_path"]:
            archive.extract(name, folder)
    split = [0] * (len(meta) - 8) + [1] * 4 + [2] * 4
    return pd.DataFrame({"image_path": [os.path.join(folder, p) for p in meta["image_path"]],
                         "label": meta["label"].to_numpy(), "split": split})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="ray_probe_")
    os.environ["HOME"] = os.path.join(scratch, "home")  # Ray Train's default storage is ~/ray_results
    os.makedirs(os.environ["HOME"])
    out = os.path.join(scratch, "weights")
    os.makedirs(out)
    try:
        result = probe(scratch, out, args.epochs, args.workers)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


def probe(scratch: str, out: str, epochs: int, workers: int) -> dict:
    import logging

    import ray
    from ludwig.api import LudwigModel
    from ludwig.callbacks import Callback
    from safetensors.torch import load_file, save_file

    from image_learner.training import timm_backbone
    from image_learner.training.ludwig_config import TrainingOptions, build_ludwig_config

    timm_backbone.register_with_ludwig()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.path.join(scratch, "ray"),
             runtime_env={"env_vars": {"HOME": os.environ["HOME"], "PYTHONPATH": ROOT}})
    table = demo_table(os.path.join(scratch, "images"))
    options = TrainingOptions(model_name="test_vit", image_size=32, use_pretrained=False, epochs=epochs,
                              early_stop=0, batch_size=4, learning_rate=0.05, augmentation=[])
    config = build_ludwig_config(options, "multiclass", train_rows=int((table["split"] == 0).sum()))
    config["trainer"]["optimizer"] = {"type": "sgd"}
    config["backend"] = {"type": "ray", "processor": {"type": "dask"},
                         "trainer": {"num_workers": workers, "use_gpu": False,
                                     "resources_per_worker": {"CPU": 0.5}}}

    class SaveWeights(Callback):
        """In each Ray worker: its live weights at the end of training and the batches it trained on."""

        def __init__(self):
            self.batches = 0

        def on_batch_end(self, trainer, progress_tracker, save_path, sync_step=True):
            self.batches += 1

        def on_trainer_train_teardown(self, trainer, progress_tracker, save_path, is_coordinator, **kwargs):
            import ray.train

            rank = ray.train.get_context().get_world_rank()
            state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
            save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
            with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
                json.dump({"batches": self.batches}, handle)

    model = LudwigModel(config, callbacks=[SaveWeights()], logging_level=logging.WARNING)
    model.train(dataset=table, output_directory=os.path.join(scratch, "ludwig"), skip_save_processed_input=True,
                skip_save_progress=True, skip_save_log=True, random_seed=7)
    weights = [load_file(os.path.join(out, f"rank{r}.safetensors")) for r in range(workers)]
    batches = [json.load(open(os.path.join(out, f"rank{r}.json")))["batches"] for r in range(workers)]
    differences = {name: float((weights[0][name] - w[name]).abs().max())
                   for w in weights[1:] for name in weights[0] if weights[0][name].is_floating_point()}
    largest = max(differences.values())
    return {"ray": ray.__version__, "workers": workers, "training_rows": int((table["split"] == 0).sum()),
            "batches_per_worker": batches, "tensors_compared": len(differences),
            "tensors_that_differ": sum(v > 0 for v in differences.values()),
            "largest_difference": largest,
            "verdict": "synchronised (identical weights)" if largest == 0 else
                       "NOT synchronised: the workers end with different weights"}


if __name__ == "__main__":
    main()
