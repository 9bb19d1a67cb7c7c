"""trained_model.zip as training writes it (model_zip.py): every file under model/, weights stored, the rest
deflated, the same bytes back."""

import json
import os
import zipfile

from image_learner.model import model_zip


def test_every_file_goes_under_model_with_the_weights_stored(tmp_path):
    folder = tmp_path / "whatever_the_folder_is_called"
    (folder / "folds").mkdir(parents=True)
    files = {
        "model_weights.safetensors": os.urandom(50_000),
        "model.onnx": os.urandom(20_000),
        "model_hyperparameters.json": json.dumps({"layers": [0] * 5000}).encode(),
        "MODEL_CARD.md": "# card\n".encode() * 500,
        "folds/fold_1.safetensors": os.urandom(10_000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    archive_path = tmp_path / "trained_model.zip"
    model_zip.write_model_zip(str(folder), str(archive_path))
    with zipfile.ZipFile(archive_path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert sorted(infos) == sorted(f"model/{name}" for name in files)
        for name, data in files.items():
            assert archive.read(f"model/{name}") == data
    stored = {name for name, info in infos.items() if info.compress_type == zipfile.ZIP_STORED}
    assert stored == {"model/model_weights.safetensors", "model/model.onnx", "model/folds/fold_1.safetensors"}
    assert infos["model/model_hyperparameters.json"].compress_type == zipfile.ZIP_DEFLATED
    assert infos["model/model_hyperparameters.json"].compress_size < len(files["model_hyperparameters.json"]) / 10
