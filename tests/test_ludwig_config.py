"""The resolved Ludwig config for a few option sets, model aliases and option validation."""

import pytest

from image_learner.training import ludwig_config
from image_learner import run_request
from image_learner.training import timm_backbone
from image_learner.errors import InputError
from image_learner.training.ludwig_config import TrainingOptions, build_ludwig_config


def _encoder(cfg):
    return cfg["input_features"][0]["encoder"]


def test_tutorial_configuration():
    opts = TrainingOptions(model_name="caformer_s18.sail_in1k_384", image_size=384, epochs=30, batch_size=32,
                           learning_rate=0.001, augmentation=["random_horizontal_flip"])
    cfg = build_ludwig_config(opts, "multiclass")
    assert _encoder(cfg) == {"type": "image_learner_timm", "model_name": "caformer_s18.sail_in1k_384",
                             "use_pretrained": True, "trainable": True, "image_size": 384}
    image = cfg["input_features"][0]
    assert image["name"] == "image_path" and image["type"] == "image"
    assert image["preprocessing"]["height"] == image["preprocessing"]["width"] == 384
    assert image["preprocessing"]["standardize_image"] is None  # the encoder normalises itself
    assert image["augmentation"] == [{"type": "random_horizontal_flip"}]
    assert cfg["output_features"] == [{"name": "label", "type": "category", "top_k": 3}]
    assert cfg["trainer"] == {"epochs": 30, "batch_size": 32, "eval_batch_size": 32, "learning_rate": 0.001,
                              "learning_rate_scheduler": {"decay": None}, "early_stop": 5,
                              "validation_field": "label", "validation_metric": "accuracy",
                              "use_mixed_precision": False}  # "auto" is resolved by pipeline per machine
    assert image["preprocessing"]["mode"] == "lazy"  # decoded per batch: memory does not grow with the data
    assert cfg["preprocessing"]["split"] == {"type": "fixed", "column": "split"}


def test_frozen_backbone_local_weights_no_augmentation_no_early_stop():
    opts = TrainingOptions(model_name="tf_efficientnet_lite0", image_size=96, fine_tune=False,
                           pretrained_weights="/weights/lite0.safetensors", early_stop=0)
    cfg = build_ludwig_config(opts, "multiclass")
    assert _encoder(cfg)["trainable"] is False
    assert _encoder(cfg)["pretrained_weights"] == "/weights/lite0.safetensors"
    assert "augmentation" not in cfg["input_features"][0]
    assert cfg["trainer"]["early_stop"] == -1


def test_binary_task_with_balanced_weight():
    opts = TrainingOptions(model_name="resnet18", image_size=224, use_pretrained=False)
    cfg = build_ludwig_config(opts, "binary", positive_weight=3.0)
    assert cfg["output_features"] == [{"name": "label", "type": "binary",
                                       "loss": {"type": "binary_weighted_cross_entropy", "positive_class_weight": 3.0}}]
    assert _encoder(cfg)["use_pretrained"] is False
    assert cfg["trainer"]["validation_metric"] == "roc_auc"  # the threshold is tuned afterwards


def test_cosine_schedule_decays_once_over_the_epochs_after_warm_up():
    opts = TrainingOptions(model_name="resnet18", image_size=64, epochs=10, batch_size=32, lr_schedule="cosine")
    # 364 training rows: 12 steps per epoch (the last one partial); 1 epoch of warm-up, 9 of decay
    assert build_ludwig_config(opts, "multiclass", train_rows=364)["trainer"]["learning_rate_scheduler"] == {
        "decay": "cosine", "warmup_evaluations": 1, "t_0": 108, "eta_min": 0.0}
    assert ludwig_config.learning_rate_scheduler("cosine", 1, 10, 4) == {
        "decay": "cosine", "warmup_evaluations": 0, "t_0": 3, "eta_min": 0.0}
    with pytest.raises(InputError, match="unknown learning-rate schedule 'step'"):
        ludwig_config.learning_rate_scheduler("step", 10, 364, 32)


def test_multiclass_balanced_class_weights():
    weights = ludwig_config.balanced_class_weights(["a"] * 6 + ["b"] * 2 + ["c"] * 4)
    assert weights == pytest.approx({"a": 12 / 18, "b": 12 / 6, "c": 12 / 12})
    cfg = build_ludwig_config(TrainingOptions(model_name="resnet18", image_size=64), "multiclass", weights)
    assert cfg["output_features"][0]["loss"] == {"type": "softmax_cross_entropy", "class_weights": weights}


def test_augmentation_parsing():
    assert ludwig_config.parse_augmentation("random_horizontal_flip, random_rotate,random_horizontal_flip") == [
        "random_horizontal_flip", "random_rotate"]
    assert ludwig_config.parse_augmentation("none") == []
    with pytest.raises(InputError, match="unknown augmentation random_zoom; choose from"):
        ludwig_config.parse_augmentation("random_zoom")


@pytest.mark.parametrize("alias, name, size", [
    ("caformer_s18_384", "caformer_s18.sail_in1k_384", 384),
    ("tf_efficientnet_lite0", "tf_efficientnet_lite0", 224),
    ("test_efficientnet", "test_efficientnet", 160),
])
def test_aliases_and_default_image_size(alias, name, size):
    assert timm_backbone.resolve_model_name(alias) == name
    assert timm_backbone.default_image_size(name) == size


def test_unknown_model_suggests_close_names():
    with pytest.raises(timm_backbone.BackboneError, match="did you mean caformer_s18"):
        timm_backbone.resolve_model_name("caformer_s81")


def _request(**training):
    opts = dict(model_name="test_efficientnet", image_size=None)
    opts.update(training)
    return run_request.RunRequest("meta.csv", "images.zip", "out", None, TrainingOptions(**opts))


@pytest.mark.parametrize("training, message", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"batch_size": 0}, "--batch-size"),
    ({"learning_rate": 0.0}, "--learning-rate"),
    ({"image_size": 8}, "--image-size must be between"),
    ({"model_name": "no_such_net"}, "unknown timm model"),
    ({"pretrained_weights": "/nowhere/w.safetensors"}, "does not exist"),
])
def test_bad_training_options_are_refused(training, message):
    with pytest.raises(InputError, match=message):
        run_request.resolve_training_options(_request(**training))


def test_default_image_size_comes_from_the_backbone():
    request = _request(model_name="caformer_s18_384", augmentation="random_horizontal_flip")
    run_request.resolve_training_options(request)
    assert request.training.model_name == "caformer_s18.sail_in1k_384"
    assert request.training.image_size == 384
    assert request.training.augmentation == ["random_horizontal_flip"]
