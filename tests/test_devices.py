"""Device and precision choice, device-correct tensor paths and out-of-memory handling, all on a CPU:
the device is always taken from the model, never assumed, so a stand-in device exercises the same code."""

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from image_learner.training import devices
import image_learner_cli
from image_learner.training import ludwig_config
from image_learner.training import ludwig_trainer
from image_learner.report import report_images
from conftest import DEMO_CSV, DEMO_ZIP
from image_learner.errors import InputError

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1",
        "--batch-size", "16", "--preprocessing-workers", "1"]


@pytest.mark.parametrize("device, mixed, gpus, expected", [
    ("auto", "auto", 0, ("cpu", False)),
    ("auto", "auto", 1, ("cuda", True)),
    ("auto", "off", 1, ("cuda", False)),
    ("auto", "off", 0, ("cpu", False)),
    ("cpu", "auto", 2, ("cpu", False)),
    ("cuda", "auto", 1, ("cuda", True)),
    ("cuda", "on", 1, ("cuda", True)),
    ("cuda", "off", 1, ("cuda", False)),
])
def test_auto_means_cuda_when_visible_and_mixed_precision_follows_the_device(device, mixed, gpus, expected):
    assert devices.choose(device, mixed, gpus) == devices.DeviceChoice(*expected)


@pytest.mark.parametrize("device, mixed, gpus, message", [
    ("cuda", "auto", 0, "--device cuda: no CUDA GPU is visible"),
    ("auto", "on", 0, "--mixed-precision on needs a CUDA GPU"),
    ("cpu", "on", 1, "--mixed-precision on needs a CUDA GPU"),
    ("gpu", "auto", 1, "--device must be one of auto, cpu, cuda"),
    ("auto", "bf16", 1, "--mixed-precision must be one of auto, on, off"),
])
def test_impossible_requests_are_input_errors_not_silent_fallbacks(device, mixed, gpus, message):
    with pytest.raises(InputError, match=message):
        devices.choose(device, mixed, gpus)


def test_cpu_hides_the_gpus_from_cuda_before_it_starts(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is already started in this process: only a fresh process can hide the GPUs")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.select("cpu", "auto") == devices.DeviceChoice("cpu", False)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # what LudwigModel(gpus=-1) would set, but in time


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda"], "--device cuda: no CUDA GPU is visible"),
    (["--mixed-precision", "on"], "--mixed-precision on needs a CUDA GPU"),
])
def test_cli_refuses_what_this_machine_cannot_do_with_exit_2(tmp_path, capsys, extra, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out),
                                   *TINY, *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["--device", "tpu"], ["--mixed-precision", "half"], ["predict", "--device", "gpu"],
])
def test_unknown_device_or_precision_values_exit_2_naming_the_choices(tmp_path, capsys, argv):
    required = (["--model", "m.zip"] if argv[0] == "predict" else ["--csv-file", DEMO_CSV]) + [
        "--image-zip", DEMO_ZIP, "--output-dir", str(tmp_path / "out")]
    mode, flags = (argv[:1], argv[1:]) if argv[0] == "predict" else ([], argv)
    with pytest.raises(SystemExit) as stop:
        image_learner_cli.main([*mode, *required, *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flags[0]}: invalid choice: {flags[1]!r}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_predict_refuses_cuda_without_a_gpu_with_exit_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    code = image_learner_cli.main(["predict", "--model", str(tmp_path / "absent.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(out), "--device", "cuda"])
    assert code == 2
    assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err
    assert not out.exists()


def test_mixed_precision_reaches_ludwig_and_bfloat16_becomes_its_autocast_default():
    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=32, mixed_precision="on")
    assert ludwig_config.build_ludwig_config(options, "multiclass")["trainer"]["use_mixed_precision"] is True
    options.mixed_precision = "off"
    assert ludwig_config.build_ludwig_config(options, "multiclass")["trainer"]["use_mixed_precision"] is False
    before = torch.get_autocast_dtype("cuda")
    with devices.autocast_default("bfloat16"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on a machine without CUDA, autocast warns that it is disabled
        # Ludwig's own call (trainer.py): torch.amp.autocast("cuda") without a dtype
        assert torch.amp.autocast("cuda").fast_dtype == torch.bfloat16
    assert torch.get_autocast_dtype("cuda") == before


def test_out_of_memory_message_names_the_sizes_and_what_to_lower():
    gpu = devices.oom_message("training", "cuda (NVIDIA H100)", 32, 384, suggest_mixed_precision=True)
    assert "out of GPU memory while training on cuda (NVIDIA H100) at batch size 32 and image size 384 px" in gpu
    assert "--batch-size (e.g. 16)" in gpu and "--image-size (e.g. 288)" in gpu and "--mixed-precision on" in gpu
    cpu = devices.oom_message("predicting", "cpu (2 threads), float32", 8, 96)
    assert "out of memory while predicting" in cpu and "batch size 8" in cpu and "more memory" in cpu
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))


def _cuda_out_of_memory_callback():
    """A Ludwig callback (its documented Callback API) that fails the first training step as CUDA would."""
    from ludwig.callbacks import Callback

    class RaiseOnFirstBatch(Callback):
        def on_batch_start(self, trainer, progress_tracker, save_path):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB "
                                              "total capacity; 78.0 GiB already allocated)")

    return RaiseOnFirstBatch()


def test_cuda_out_of_memory_in_training_exits_137_naming_sizes_and_leaves_no_outputs(tmp_path, monkeypatch, capsys):
    real_train = ludwig_trainer.train
    monkeypatch.setattr(ludwig_trainer, "train",  # our module, not Ludwig: the callback goes in through its API
                        lambda *args, **kwargs: real_train(*args, callbacks=[_cuda_out_of_memory_callback()], **kwargs))
    out = tmp_path / "out"
    code = image_learner_cli.main(["--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == 137, err
    assert "out of memory while training" in err and "at batch size 16 and image size 32 px" in err
    assert "lower --batch-size (e.g. 8) or --image-size" in err
    assert os.listdir(out) == []


def test_out_of_memory_while_predicting_names_the_batch_and_image_size():
    class Model:
        config = {"input_features": [{"preprocessing": {"height": 384}}]}

        def predict(self, dataset, batch_size):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    with pytest.raises(devices.OutOfMemory, match="while predicting .* at batch size 64 and image size 384 px"):
        ludwig_trainer.predict_probabilities(Model(), pd.DataFrame({"image_path": ["a.png"]}), ["a", "b"],
                                             "multiclass", 64)


@pytest.fixture
def meta_device(tmp_path, monkeypatch):
    """Meta tensors run torch's Python reference ops, whose import makes torch's compile cache folder:
    keep it in the test's own folder."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch_cache"))
    return "meta"


class _OnDevice(torch.Tensor):
    """A tensor that, like a CUDA tensor, cannot become a NumPy array without ``.cpu()`` first."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        result = super().__torch_function__(func, types, args, kwargs or {})
        return result.as_subclass(torch.Tensor) if func is torch.Tensor.cpu else result


class _ModelOnAnotherDevice(torch.nn.Module):
    """A stand-in for a Ludwig ECD model that lives on another device ('meta' stands in for 'cuda'):
    torch's own device check rejects inputs left on the CPU, and the feature maps it hands out behave
    like GPU tensors. The maps themselves are computed for real on the CPU so Grad-CAM has numbers."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1, 3, 1, 1, device="meta"))  # the model's device
        backbone = torch.nn.Module()
        backbone.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        backbone.feature_info = [{"module": "stem"}]
        backbone.stem.register_forward_hook(lambda _m, _i, out: out.as_subclass(_OnDevice))
        self.backbone = backbone
        self.head = torch.nn.Linear(4, n_classes)
        self.input_features = {"image_path": SimpleNamespace(encoder_obj=SimpleNamespace(model=backbone))}
        self.inputs_seen = []

    def forward(self, inputs):
        x = inputs["image_path"]
        x * self.scale  # a CPU input raises "Tensor on device meta is not on the expected device cpu!"
        self.inputs_seen.append(x.device.type)
        maps = self.backbone.stem(torch.rand(1, 3, *x.shape[-2:], generator=torch.Generator().manual_seed(0)))
        return {"label::logits": self.head(maps.mean(dim=(2, 3)))}


def test_grad_cam_moves_inputs_to_the_models_device_and_results_to_the_host(tmp_path, meta_device):
    classes = ["mel", "nv"]
    names = [f"img{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / name)
    predictions = pd.DataFrame({"image": names, "image_file": names, "split": "test",
                                "true_label": ["mel", "nv", "mel", "nv"], "predicted_label": ["mel", "mel", "nv", "nv"],
                                "prob_mel": [0.9, 0.6, 0.3, 0.2], "prob_nv": [0.1, 0.4, 0.7, 0.8]})
    ecd = _ModelOnAnotherDevice(len(classes))
    items, reason = report_images.grad_cam_overlays(predictions, classes, str(tmp_path), SimpleNamespace(model=ecd),
                                                    16, "multiclass")
    assert reason is None and len(items) == 4
    assert ecd.inputs_seen == ["meta"] * 4
    assert all(item["overlay"].startswith("data:image/jpeg;base64,") for item in items)


def test_the_encoder_creates_no_tensor_off_its_inputs_device(meta_device):
    from image_learner.training import timm_backbone

    timm_backbone.register_with_ludwig()
    from ludwig.encoders.registry import get_encoder_registry

    encoder = get_encoder_registry()["image"][timm_backbone.ENCODER_TYPE](
        model_name="test_efficientnet", use_pretrained=False, image_size=32).to(meta_device)
    out = encoder(torch.zeros(2, 3, 32, 32, device=meta_device))
    assert next(iter(out.values())).device.type == meta_device
