"""Our ECD trainer: Ludwig 0.17.10's ``Trainer`` subclassed (never patched) and registered for model type
``ecd`` through Ludwig's trainer registry (``register_trainer``), as timm_backbone registers the encoder.

Ludwig's trainer makes the CPU wait for the GPU several times a batch (issue 22); four changes, each
applied only where it matters, none touching the validation metrics or the weights' updates:

- ``metrics``: the training metrics are updated from outputs kept on the device (detached) every
  ``METRICS_EVERY`` batches and before each evaluation, in one torchmetrics update of the concatenated
  batches instead of one per batch (each update validates its arguments: a sync). Counts (accuracy,
  recall, F1, ROC AUC) are the same; the train loss, a mean of per-update means, becomes the mean of
  per-group (``METRICS_EVERY`` batches) means instead of per-batch means: equal when every group has as
  many images, otherwise the last, smaller group weighs a little more (documented in BENCHMARKS.md).
- ``bf16_no_scaler``: no loss scaling when autocast runs in bfloat16 (it has float32's range; the scaler
  costs a ``found_inf.item()`` sync every step and silently skips steps); float16 keeps Ludwig's scaler.
- ``pinned_copy`` (CUDA only): each batch array is copied once into pinned host memory and sent with a
  non-blocking copy; Ludwig copies it on the host (``np.array(copy=True)``), then from pageable memory.
- ``cudnn_benchmark`` (CUDA only): cuDNN picks its fastest convolution algorithms for the fixed image size.
- ``batches_ahead`` (CUDA only): the next batches are read, decoded and augmented by one background thread
  while the GPU trains on this one (``BatchesAhead``). The config turns Ludwig's own prefetching off (its
  thread starts before the epoch and drops batches at ``set_epoch``, so the augmentations' draws from torch's
  global generator depended on timing); this thread starts with each epoch's loop and reads the batches in
  order, so the draws are those of the synchronous path. On a CPU the model's own draws (dropout) would
  interleave with them on the same generator, so there it stays off. Measured on an H200 (BENCHMARKS.md):
  without it, a caformer_s18 batch took the GPU's time plus ~85-90 ms of host work.

``select`` chooses the changes (the benchmarks stack them one by one); no change at all registers
Ludwig's own ``Trainer``. tests/test_fast_trainer.py pins every Ludwig name used here.
"""

from __future__ import annotations

import queue
import threading

CHANGES = ("metrics", "bf16_no_scaler", "pinned_copy", "cudnn_benchmark", "batches_ahead")
METRICS_EVERY = 16  # batches whose outputs are kept before one metrics update
BATCHES_AHEAD = 2  # batches the background thread may hold ready
AHEAD_ON_CPU = False  # tests only: the CPU's model draws nothing in tests/test_fast_trainer.py's tiny model

_selected: tuple[str, ...] = CHANGES
_classes: dict[tuple[str, ...], type] = {}


def select(changes=CHANGES) -> None:
    """Which changes the ``ecd`` trainer applies from now on (a subset of CHANGES; () = Ludwig's own
    trainer), and register it."""
    unknown = set(changes) - set(CHANGES)
    if unknown:
        raise ValueError(f"unknown trainer changes {sorted(unknown)}; known: {', '.join(CHANGES)}")
    global _selected
    _selected = tuple(c for c in CHANGES if c in changes)
    register_with_ludwig()


def register_with_ludwig() -> None:
    """Register the selected trainer for model type ``ecd`` (idempotent: re-registering the same class)."""
    from ludwig.constants import MODEL_ECD
    from ludwig.trainers.registry import register_trainer
    from ludwig.trainers.trainer import Trainer

    register_trainer(MODEL_ECD)(trainer_class(_selected) if _selected else Trainer)


def trainer_class(changes: tuple[str, ...]) -> type:
    """The Trainer subclass applying ``changes`` (one class per combination, built once)."""
    if changes not in _classes:
        _classes[changes] = _build(frozenset(changes))
    return _classes[changes]


def _detached(value):
    """``value`` (a tensor, or a dict of them, as Ludwig's model outputs) without its autograd graph."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _concatenated(parts: list[dict]):
    """Dicts of same-keyed (nested) batch tensors -> one dict of tensors concatenated along the batch."""
    import torch

    first = parts[0]
    if isinstance(first, dict):
        return {k: _concatenated([p[k] for p in parts]) for k in first}
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(parts)
    return first


class BatchesAhead:
    """Ludwig's batcher, read ``depth`` batches ahead by one background thread, in order, for one epoch.

    Offers what ``Trainer._train_loop`` calls (``last_batch``, ``next_batch``); an error in the thread is
    raised by ``next_batch``; ``close`` stops the thread and waits for it (the loop may stop mid-epoch)."""

    _END = object()

    def __init__(self, batcher, depth: int = BATCHES_AHEAD):
        self._batcher = batcher
        self._ready = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="image-learner-batches", daemon=True)
        self._thread.start()
        self._next = self._ready.get()

    def _read(self) -> None:
        item = self._END
        try:
            while not self._stop.is_set() and not self._batcher.last_batch():
                self._put(("batch", self._batcher.next_batch()))
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, raised there
            item = ("error", err)
        self._put(item)
        if item is not self._END:
            self._put(self._END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def last_batch(self) -> bool:
        return self._next is self._END

    def next_batch(self):
        if self._next is self._END:
            raise StopIteration()
        kind, value = self._next
        if kind == "error":
            raise value
        self._next = self._ready.get()
        return value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put
                self._ready.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def _build(changes: frozenset) -> type:
    import numpy as np
    import torch
    from ludwig.trainers.trainer import Trainer

    class ImageLearnerTrainer(Trainer):
        """Ludwig's Trainer with ``changes`` (module docstring)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._kept_outputs: list[tuple[dict, dict]] = []
            cuda = torch.device(self.device).type == "cuda"
            self._pinned = "pinned_copy" in changes and cuda
            self._ahead = "batches_ahead" in changes and (cuda or AHEAD_ON_CPU)
            if "cudnn_benchmark" in changes and cuda:
                torch.backends.cudnn.benchmark = True
            # Ludwig's autocast("cuda") uses torch's default dtype, which devices.autocast_default sets.
            if "bf16_no_scaler" in changes and self.use_amp and torch.get_autocast_dtype("cuda") == torch.bfloat16:
                self.scaler = torch.amp.GradScaler("cuda", enabled=False)  # passes loss and step through

        def _update_training_metrics(self, model_outputs, targets):
            if "metrics" not in changes or self.evaluate_training_set:
                return super()._update_training_metrics(model_outputs, targets)
            self._kept_outputs.append((_detached(model_outputs), _detached(targets)))
            if len(self._kept_outputs) >= METRICS_EVERY:
                self._flush_training_metrics()

        def _flush_training_metrics(self):
            """One metrics update from the kept batches' outputs, concatenated."""
            if not self._kept_outputs:
                return
            outputs = _concatenated([o for o, _ in self._kept_outputs])
            targets = _concatenated([t for _, t in self._kept_outputs])
            self._kept_outputs = []
            with torch.no_grad():
                super()._update_training_metrics(outputs, targets)

        def run_evaluation(self, *args, **kwargs):
            self._flush_training_metrics()  # the train metrics Ludwig reads cover every batch
            return super().run_evaluation(*args, **kwargs)

        def tune_batch_size(self, *args, **kwargs):
            result = super().tune_batch_size(*args, **kwargs)
            self._kept_outputs = []  # Ludwig resets the metrics after its trial steps: drop their outputs too
            return result

        def _train_loop(self, batcher, *args, **kwargs):
            if not self._ahead:
                return super()._train_loop(batcher, *args, **kwargs)
            ahead = BatchesAhead(batcher)
            try:
                return super()._train_loop(ahead, *args, **kwargs)
            finally:
                ahead.close()

        def _batch_to_tensors(self, batch):
            if not self._pinned:
                return super()._batch_to_tensors(batch)

            def to_device(array):
                array = np.asarray(array)
                if array.dtype == object:  # not a numeric block: Ludwig's way
                    return torch.from_numpy(np.array(array, copy=True)).to(self.device)
                host = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, pin_memory=True)
                host.numpy()[...] = array  # the one host copy, straight into pinned memory
                return host.to(self.device, non_blocking=True)

            inputs = {f.feature_name: to_device(batch[f.proc_column]) for f in self.model.input_features.values()}
            targets = {f.feature_name: to_device(batch[f.proc_column]) for f in self.model.output_features.values()}
            return inputs, targets

    ImageLearnerTrainer.__qualname__ = ImageLearnerTrainer.__name__ = (
        "ImageLearnerTrainer_" + "_".join(c for c in CHANGES if c in changes))
    return ImageLearnerTrainer
