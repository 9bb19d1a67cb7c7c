"""Grad-CAM and the report on a real (tiny) Ludwig model with a number output: the saliency explains
the predicted value. The Ludwig config is built here from ludwig_config's image input with a
``number`` output, so this needs no regression training code."""

import logging
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_learner.training import ludwig_config
import report_builder
from image_learner.report import report_images
from image_learner.run_files import scratch_tempdir
from conftest import DEMO_ZIP
from test_report_regression import write_regression_run

N_IMAGES = 40


@pytest.fixture(scope="module")
def number_model(tmp_path_factory):
    from image_learner.training import timm_backbone

    timm_backbone.register_with_ludwig()
    from ludwig.api import LudwigModel

    base = tmp_path_factory.mktemp("regression_cam")
    images_dir = base / "images"
    with zipfile.ZipFile(DEMO_ZIP) as archive:
        names = sorted(archive.namelist())[:N_IMAGES]
        archive.extractall(images_dir, members=names)
    # a learnable number: each image's mean brightness (0-100)
    target = [float(np.asarray(Image.open(images_dir / n).convert("L")).mean() / 2.55) for n in names]
    split = np.array([0] * 24 + [1] * 6 + [2] * 10)
    table = pd.DataFrame({"image_path": [str(images_dir / n) for n in names], "label": target, "split": split})
    options = ludwig_config.TrainingOptions(model_name="test_efficientnet", image_size=32, use_pretrained=False,
                                            epochs=1, batch_size=8, early_stop=0)
    config = ludwig_config.build_ludwig_config(options, "multiclass")
    config["output_features"] = [{"name": "label", "type": "number"}]
    config["trainer"]["validation_metric"] = "mean_absolute_error"
    model = LudwigModel(config, logging_level=logging.ERROR)
    with scratch_tempdir(str(base)):  # Ludwig's lock files go there, as in a real run
        model.train(dataset=table, output_directory=str(base / "ludwig"), skip_save_processed_input=True,
                    skip_save_progress=True, skip_save_log=True, skip_save_model=True, random_seed=42)
        predicted, _ = model.predict(dataset=table[["image_path"]], batch_size=8)
    predictions = pd.DataFrame({"image": names, "image_file": names,
                                "split": np.array(["train", "validation", "test"])[split],
                                "true_value": target, "predicted_value": predicted["label_predictions"].to_numpy()})
    return model, predictions, str(images_dir)


def test_grad_cam_explains_the_predicted_value(number_model):
    model, predictions, images_dir = number_model
    items, reason = report_images.grad_cam_overlays(predictions, [], images_dir, model, 32, "regression")
    assert reason is None and len(items) == report_images.MAX_SALIENCY
    test = predictions[predictions.split == "test"]
    errors = (test.predicted_value - test.true_value).abs()
    worst = test.loc[errors.idxmax(), "image"]
    assert items[0]["image"] == worst  # the largest error first, then the smallest ones
    assert items[0]["error"] == pytest.approx(errors.max())
    for item in items:
        assert item["overlay"].startswith("data:image/jpeg;base64,") and item["overlay"] != item["src"]
        assert {"true", "predicted", "error"} <= set(item)


def test_report_of_a_number_model_has_saliency_and_largest_errors(number_model, tmp_path):
    model, predictions, images_dir = number_model
    run = write_regression_run(str(tmp_path / "run"))
    predictions.to_csv(os.path.join(run, "predictions.csv"), index=False)
    os.remove(os.path.join(run, "metrics.json"))  # recomputed from these predictions
    html = open(report_builder.build_report(run, images_dir=images_dir, ludwig_model=model), encoding="utf-8").read()
    assert "Red: regions that raised the predicted value most" in html
    assert html.count('alt="saliency of') == report_images.MAX_SALIENCY
    assert "Largest errors (test)" in html and "Not shown" not in html
