"""Our ECD trainer (image_learner/training/fast_trainer.py): the Ludwig names it relies on are pinned (an
upgrade that renames or reshapes one fails here, loudly), it is the trainer Ludwig uses, and on a tiny CPU
run its per-epoch validation metrics and kept epoch are those of Ludwig's own trainer."""

import inspect
import os
import re

import numpy as np
import pandas as pd
import pytest

from image_learner.training import fast_trainer
from tests.conftest import png_bytes

# Ludwig 0.17.10's parameters of every method the subclass overrides (it passes them through unchanged).
OVERRIDDEN = {
    "__init__": ("self", "config", "model", "resume", "skip_save_model", "skip_save_progress", "skip_save_log",
                 "callbacks", "report_tqdm_to_ray", "random_seed", "distributed", "device", "kwargs"),
    "_update_training_metrics": ("self", "model_outputs", "targets"),
    "run_evaluation": ("self", "training_set", "validation_set", "test_set", "progress_tracker",
                       "train_summary_writer", "validation_summary_writer", "test_summary_writer",
                       "model_hyperparameters_path", "output_features", "metrics_names", "save_path", "loss",
                       "all_losses", "early_stopping_steps", "checkpoint_manager"),
    "tune_batch_size": ("self", "config", "training_set", "random_seed", "max_trials", "halving_limit",
                        "snapshot_weights", "on_best_batch_size_updated", "tune_for_training",
                        "global_max_sequence_length"),
    "_batch_to_tensors": ("self", "batch"),
    "_train_loop": ("self", "batcher", "progress_tracker", "save_path", "train_summary_writer", "progress_bar",
                    "training_set", "validation_set", "test_set", "start_time", "validation_summary_writer",
                    "test_summary_writer", "model_hyperparameters_path", "output_features", "metrics_names",
                    "checkpoint_manager", "final_steps_per_checkpoint", "early_stopping_steps", "profiler"),
}


def test_ludwig_names_the_trainer_relies_on_are_unchanged():
    from ludwig.constants import MODEL_ECD
    from ludwig.models.base import BaseModel
    from ludwig.trainers import registry
    from ludwig.trainers.trainer import Trainer

    assert MODEL_ECD == "ecd"
    assert list(inspect.signature(registry.register_trainer).parameters) == ["model_type", "default"]
    for name, parameters in OVERRIDDEN.items():
        assert tuple(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
    assert tuple(inspect.signature(BaseModel.update_metrics).parameters) == ("self", "targets", "predictions")
    # The attributes read or replaced, set by Ludwig's __init__, and the call sites the overrides hook into.
    init = inspect.getsource(Trainer.__init__)
    for attribute in ("self.device =", "self.use_amp =", "self.scaler =", "self.evaluate_training_set =",
                      'torch.amp.autocast("cuda")', "self.scaler.scale(loss)", "self.scaler.step(self.optimizer)"):
        assert attribute in init + inspect.getsource(Trainer._forward_pass) + inspect.getsource(
            Trainer._backward_pass) + inspect.getsource(Trainer._optimizer_step), attribute
    assert "self._update_training_metrics(model_outputs, targets)" in inspect.getsource(Trainer.train_step)
    train_loop = inspect.getsource(Trainer._train_loop)
    assert "self._batch_to_tensors(batch)" in train_loop
    # BatchesAhead offers the loop these two calls of its batcher, and nothing else of it is used there
    assert {call for call in ("batcher.last_batch()", "batcher.next_batch()") if call in train_loop} == {
        "batcher.last_batch()", "batcher.next_batch()"}
    assert set(re.findall(r"batcher\.\w+", train_loop)) == {"batcher.last_batch", "batcher.next_batch"}
    assert "self.run_evaluation(" in inspect.getsource(Trainer._eval_and_checkpoint)
    evaluation = inspect.getsource(Trainer.run_evaluation)
    assert "self.model.get_metrics()" in evaluation and "self.model.reset_metrics()" in evaluation
    batch_to_tensors = inspect.getsource(Trainer._batch_to_tensors)
    for name in ("self.model.input_features", "self.model.output_features", "feature_name", "proc_column"):
        assert name in batch_to_tensors, name
    assert "self.model.outputs_to_predictions(model_outputs)" in inspect.getsource(Trainer._update_training_metrics)


def test_our_trainer_is_the_one_registered_for_ecd():
    from ludwig.trainers.registry import get_trainers_registry
    from ludwig.trainers.trainer import Trainer

    from image_learner.training import ludwig_trainer

    ludwig_trainer.register_with_ludwig()
    ours = get_trainers_registry()["ecd"]
    assert ours is fast_trainer.trainer_class(fast_trainer.CHANGES) and issubclass(ours, Trainer)
    try:
        fast_trainer.select(())
        assert get_trainers_registry()["ecd"] is Trainer
        with pytest.raises(ValueError, match="unknown trainer changes"):
            fast_trainer.select(("metrics", "fp8"))
    finally:
        fast_trainer.select()
    assert get_trainers_registry()["ecd"] is ours


def _tiny_table(directory) -> pd.DataFrame:
    """48 training images (6 batches of 8), 16 validation, 8 test; three classes of random textures."""
    rows = []
    for i in range(72):
        path = os.path.join(directory, f"img{i}.png")
        with open(path, "wb") as handle:
            handle.write(png_bytes(i))
        rows.append({"image_path": path, "label": "abc"[i % 3], "split": 0 if i < 48 else 1 if i < 64 else 2})
    return pd.DataFrame(rows)


def _train(table, work, changes, augmentation=()):
    from ludwig.callbacks import Callback

    from image_learner import run_files
    from image_learner.training import ludwig_config, ludwig_trainer

    class Which(Callback):
        name = None

        def on_trainer_train_setup(self, trainer, save_path, is_coordinator, **kwargs):
            Which.name = type(trainer).__name__

    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=32, use_pretrained=False,
                                            epochs=2, early_stop=0, batch_size=8, augmentation=list(augmentation))
    config = ludwig_config.build_ludwig_config(options, "multiclass", train_rows=48)
    os.makedirs(work)
    fast_trainer.select(changes)
    try:
        with run_files.scratch_tempdir(work) as scratch:  # Ludwig's lock files go there, as in a run
            trained = ludwig_trainer.train(table, config, scratch, os.path.join(work, "model"), 42, "multiclass",
                                           "balanced_accuracy", callbacks=[Which()])
    finally:
        fast_trainer.select()
    return trained, Which.name


def test_same_validation_metrics_and_kept_epoch_as_ludwigs_trainer(tmp_path, monkeypatch):
    # Groups of 3 batches: the epoch's 6 batches make 2 equal groups, so even the train loss (a mean of
    # per-update means) matches Ludwig's mean of per-batch means; the flush before evaluation is exercised
    # by an epoch that does not end on a group boundary in the second check below.
    monkeypatch.setattr(fast_trainer, "METRICS_EVERY", 3)
    table = _tiny_table(tmp_path)
    stock, stock_name = _train(table, str(tmp_path / "stock"), ())
    ours, our_name = _train(table, str(tmp_path / "ours"), fast_trainer.CHANGES)
    assert stock_name == "Trainer" and our_name.startswith("ImageLearnerTrainer_metrics")
    validation = [c for c in stock.history.columns if c.startswith("validation_")]
    assert "validation_balanced_accuracy" in validation and "validation_loss" in validation
    pd.testing.assert_frame_equal(ours.history[validation], stock.history[validation], check_exact=True)
    assert ours.best_epoch == stock.best_epoch
    train = [c for c in stock.history.columns if c.startswith("train_")]
    assert "train_accuracy" in train and "train_loss" in train
    np.testing.assert_allclose(ours.history[train].to_numpy(), stock.history[train].to_numpy(), rtol=1e-5)

    # 6 batches in groups of 4: the last 2 are flushed before each evaluation. Counts stay identical;
    # only the loss's weighting of the smaller group may move it.
    monkeypatch.setattr(fast_trainer, "METRICS_EVERY", 4)
    uneven, _ = _train(table, str(tmp_path / "uneven"), fast_trainer.CHANGES)
    pd.testing.assert_frame_equal(uneven.history[validation], stock.history[validation], check_exact=True)
    counts = [c for c in train if "loss" not in c]
    np.testing.assert_allclose(uneven.history[counts].to_numpy(), stock.history[counts].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(uneven.history["train_loss"], stock.history["train_loss"], rtol=0.05)


class _Batches:
    """A stand-in for Ludwig's batcher: ``n`` batches, each drawn from torch's global generator as Ludwig's
    augmentations draw; ``fail_at``: the batch whose reading raises."""

    def __init__(self, n, fail_at=None):
        self.n, self.read, self.fail_at = n, 0, fail_at

    def last_batch(self):
        return self.read >= self.n

    def next_batch(self):
        import torch

        if self.read == self.fail_at:
            raise OSError(f"image {self.read} unreadable")
        self.read += 1
        return {"image": torch.rand(4, 3).numpy()}


def test_batches_read_ahead_are_the_synchronous_ones_in_order_with_the_same_draws():
    import torch

    torch.manual_seed(3)
    synchronous = _Batches(7)
    expected = [synchronous.next_batch()["image"] for _ in range(7)]
    after = torch.rand(1)
    torch.manual_seed(3)
    ahead = fast_trainer.BatchesAhead(_Batches(7), depth=2)
    got = []
    while not ahead.last_batch():
        got.append(ahead.next_batch()["image"])
    ahead.close()
    assert len(got) == 7 and all((g == e).all() for g, e in zip(got, expected))
    assert torch.equal(torch.rand(1), after)  # the generator left where the synchronous reading leaves it
    with pytest.raises(StopIteration):
        ahead.next_batch()


def test_an_error_while_reading_ahead_is_raised_in_the_training_thread_and_close_stops_early():
    ahead = fast_trainer.BatchesAhead(_Batches(5, fail_at=2), depth=1)
    ahead.next_batch(), ahead.next_batch()
    with pytest.raises(OSError, match="image 2 unreadable"):
        ahead.next_batch()
    ahead.close()
    early = fast_trainer.BatchesAhead(_Batches(1000), depth=2)
    early.next_batch()
    early.close()  # mid-epoch: the thread stops within a few batches and is joined
    assert not early._thread.is_alive() and early._batcher.read <= 5


def test_reading_ahead_with_augmentation_gives_ludwigs_numbers(tmp_path, monkeypatch):
    """On the CPU (forced: the tiny model draws nothing itself), with per-image augmentation drawing from the
    global generator: the trainer reading batches ahead gives Ludwig's validation history exactly."""
    monkeypatch.setattr(fast_trainer, "AHEAD_ON_CPU", True)
    epochs_read_ahead = []

    class Counted(fast_trainer.BatchesAhead):
        def close(self):
            epochs_read_ahead.append(self._batcher.steps_per_epoch)
            super().close()

    monkeypatch.setattr(fast_trainer, "BatchesAhead", Counted)
    table = _tiny_table(tmp_path)
    stock, _ = _train(table, str(tmp_path / "stock"), (), augmentation=["dihedral", "color_jitter"])
    ahead, name = _train(table, str(tmp_path / "ahead"), ("batches_ahead",),
                         augmentation=["dihedral", "color_jitter"])
    assert name == "ImageLearnerTrainer_batches_ahead" and epochs_read_ahead == [6, 6]  # 2 epochs of 6 batches
    validation = [c for c in stock.history.columns if c.startswith("validation_")]
    pd.testing.assert_frame_equal(ahead.history[validation], stock.history[validation], check_exact=True)
    train = [c for c in stock.history.columns if c.startswith("train_")]
    pd.testing.assert_frame_equal(ahead.history[train], stock.history[train], check_exact=True)
