"""trained_model.zip, written: every file of the model folder under ``model/``, the weights stored, the rest
deflated.

Weights (float tensors: ``.safetensors``, ``.onnx``) barely deflate: zlib's level 6 takes caformer_s18's 97 MB
to 90 MB in 3.0 s of CPU, level 1 to 90 MB in 2.5 s, while storing them takes 0.13 s (BENCHMARKS.md, "The model
ZIP"). The JSON files and the card deflate well and are small. model_archive reads both kinds of member under
the same limits.
"""

from __future__ import annotations

import os
import zipfile

FOLDER = "model"  # the one folder of the archive (model_archive expects every member below it)
STORED_SUFFIXES = (".safetensors", ".onnx")


def member_plan(model_dir: str) -> list[tuple[str, str, int]]:
    """(path, name in the archive, zipfile compression) of every file below ``model_dir``, in sorted order."""
    plan = []
    for folder, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            arcname = "/".join([FOLDER, *os.path.relpath(path, model_dir).split(os.sep)])
            plan.append((path, arcname, zipfile.ZIP_STORED if name.endswith(STORED_SUFFIXES)
                         else zipfile.ZIP_DEFLATED))
    return plan


def write_model_zip(model_dir: str, zip_path: str) -> None:
    """``zip_path`` holding ``model_dir``'s files as ``model/...`` (member_plan)."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path, arcname, compression in member_plan(model_dir):
            archive.write(path, arcname, compress_type=compression)
