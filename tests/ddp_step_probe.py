"""Helper of tests/test_data_parallel.py (not a test): train a tiny model through Ludwig and save the live
training weights of this process when training ends (a Ludwig callback; before rank 0 reloads its best
checkpoint), as ``OUT/rank<RANK>.safetensors``, and the steps it took and the world it trained in as
``OUT/steps<RANK>.json``.

    probe.py BACKEND TABLE.json OUT BATCH LR EPOCHS [MODEL]    (under torchrun, or plain python for one process)

BACKEND ``ddp``: data_parallel.make_backend() (Ludwig's AccelerateStrategy); ``local``: Ludwig's plain
LocalBackend, which under torchrun trains one unsynchronised copy per process.
test_vit has no BatchNorm (LayerNorm only) and no dropout, so one synchronised step on 2 x B images must equal
one single-process step on the same 2B images; plain SGD, as Adam's first step hides the gradient's size.
MODEL (default test_vit): another timm name, e.g. test_efficientnet (BatchNorm) for BENCHMARKS.md's comparison.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import logging  # noqa: E402

import pandas as pd  # noqa: E402


def main(backend_name, table_path, out, batch, lr, epochs, model_name="test_vit"):
    from ludwig.api import LudwigModel
    from ludwig.callbacks import Callback
    from safetensors.torch import save_file

    from image_learner.training import data_parallel
    from image_learner.training import timm_backbone
    from image_learner.training.ludwig_config import TrainingOptions, build_ludwig_config

    timm_backbone.register_with_ludwig()
    rank = int(os.environ.get("RANK", 0))
    table = pd.read_json(table_path, orient="split", dtype=False)
    options = TrainingOptions(model_name=model_name, image_size=32, use_pretrained=False, epochs=int(epochs),
                              early_stop=0, batch_size=int(batch), learning_rate=float(lr), augmentation=[])
    config = build_ludwig_config(options, "multiclass", train_rows=int((table["split"] == 0).sum()))
    config["trainer"]["optimizer"] = {"type": "sgd"}

    class SaveWeights(Callback):
        def on_epoch_start(self, trainer, progress_tracker, save_path, **kwargs):
            if progress_tracker.epoch == 0:
                self._save(trainer, "start")

        def on_trainer_train_teardown(self, trainer, progress_tracker, save_path, is_coordinator, **kwargs):
            self._save(trainer, "rank")
            with open(os.path.join(out, f"steps{rank}.json"), "w") as handle:
                json.dump({"steps": progress_tracker.steps, "world": trainer.distributed.size()}, handle)

        def _save(self, trainer, prefix):
            state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
            save_file(state, os.path.join(out, f"{prefix}{rank}.safetensors"))

    backend = data_parallel.make_backend() if backend_name == "ddp" else "local"
    model = LudwigModel(config, callbacks=[SaveWeights()], backend=backend, logging_level=logging.INFO)
    model.train(dataset=table, output_directory=os.path.join(out, f"ludwig{rank}"), skip_save_processed_input=True,
                skip_save_progress=True, skip_save_log=True, random_seed=7)


if __name__ == "__main__":
    main(*sys.argv[1:])
