"""The tools' container image (Dockerfile): one list of pinned dependencies (pyproject.toml, mirrored by
macros.xml's requirements), installed by the recipe from pyproject.toml, and an image whose Python imports
every pinned package at its pinned version and runs the `image-learner` command.

The image tests need the image: the test command builds it (scripts/ensure_image.sh) before pytest runs.
They fail when it is missing; they are skipped only outside CI on a machine without podman."""

import json
import os
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

# conda names in macros.xml that differ from the PyPI names in pyproject.toml
CONDA_TO_PYPI = {"pytorch": "torch"}
# distributions whose import name is not their name with '-' -> '_'
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn", "faiss-cpu": "faiss"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def _pyproject_pins(extras: tuple[str, ...] = ()) -> dict[str, str]:
    project = _pyproject()["project"]
    deps = project["dependencies"] + [d for extra in extras for d in project["optional-dependencies"][extra]]
    pins = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([A-Za-z0-9_.+!\-]+)", dep.strip())
        assert match, f"pyproject.toml must pin every dependency exactly (name==version), not {dep!r}"
        pins[_normalise(match[1])] = match[2]
    return pins


def _image_name() -> str:
    root = ET.parse(os.path.join(ROOT, "macros.xml")).getroot()
    version = next(t.text for t in root.iter("token") if t.get("name") == "@TOOL_VERSION@")
    containers = [c.text.strip() for c in root.iter("container") if c.get("type") == "docker"]
    assert len(containers) == 1, containers
    return containers[0].replace("@TOOL_VERSION@", version)


def test_pyproject_pins_exactly_the_versions_macros_declares():
    macros = {}
    for req in ET.parse(os.path.join(ROOT, "macros.xml")).getroot().iter("requirement"):
        name = req.text.strip()
        macros[_normalise(CONDA_TO_PYPI.get(name, name))] = req.get("version")
    assert _pyproject_pins() == macros


def test_the_recipe_installs_pyprojects_list_on_a_debian_image():
    recipe = open(os.path.join(ROOT, "Dockerfile")).read()
    assert re.search(r"^FROM docker\.io/library/debian:\S+( AS \w+)?$", recipe, re.M)
    assert re.search(r"^COPY pyproject\.toml ", recipe, re.M)
    assert '["project"]["dependencies"]' in recipe and "pip install -r" in recipe
    assert "pip install --no-deps" in recipe  # the project itself, from the same checkout
    assert '["optional-dependencies"]["distributed"]' in recipe  # --distributed ddp's Accelerate, same file
    assert '["tool"]["image-learner"]["python-image"]' in recipe  # the build checks the declared Python
    assert not re.search(r"[A-Za-z0-9]\s*(==|>=|<=|~=)\s*[0-9]", recipe), "the recipe keeps no version list of its own"


def test_the_tag_is_the_tool_version():
    root = ET.parse(os.path.join(ROOT, "macros.xml")).getroot()
    version = next(t.text for t in root.iter("token") if t.get("name") == "@TOOL_VERSION@")
    assert _image_name().endswith(":" + version)


@pytest.fixture(scope="module")
def podman_image():
    podman = shutil.which("podman")
    if podman is None:
        if os.environ.get("CI"):
            pytest.fail("podman is missing: the test command (scripts/run_tests.sh) installs it and builds the image")
        pytest.skip("podman is not installed (bash scripts/ensure_image.sh installs it and builds the image)")
    image = _image_name()
    found = subprocess.run([podman, "image", "exists", image], check=False).returncode == 0
    assert found, f"the image {image} is missing: build it with `bash scripts/ensure_image.sh`"
    return podman, image


def _run_in_image(podman_image, *command, timeout=300):
    podman, image = podman_image
    return subprocess.run([podman, "run", "--rm", image, *command], capture_output=True, text=True,
                          timeout=timeout, check=False)


_CHECK_VERSIONS = """
import importlib, importlib.metadata, json, sys
found = {}
for dist, module in json.loads(sys.argv[1]).items():
    importlib.import_module(module)
    found[dist] = importlib.metadata.version(dist)
print(json.dumps({"python": list(sys.version_info[:2]), "versions": found}))
"""


def test_one_place_declares_the_python_of_the_environment_and_of_the_image():
    """pyproject.toml's [tool.image-learner]: ensure_env.sh tries python-env first, the Dockerfile checks
    python-image, and these tests run on one of the two."""
    declared = _pyproject()["tool"]["image-learner"]
    assert re.fullmatch(r"3\.\d+", declared["python-env"]) and re.fullmatch(r"3\.\d+", declared["python-image"])
    assert "python-env" in open(os.path.join(ROOT, "scripts", "ensure_env.sh")).read()
    import sys

    assert "%d.%d" % sys.version_info[:2] in (declared["python-env"], declared["python-image"])


def test_the_image_imports_every_pinned_package_at_its_pinned_version(podman_image):
    pins = _pyproject_pins(extras=("distributed",))
    modules = {dist: IMPORT_NAMES.get(dist, dist.replace("-", "_")) for dist in pins}
    done = _run_in_image(podman_image, "python", "-c", _CHECK_VERSIONS, json.dumps(modules))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "%d.%d" % tuple(report["python"]) == _pyproject()["tool"]["image-learner"]["python-image"]
    assert {_normalise(k): v for k, v in report["versions"].items()} == pins


def test_the_image_runs_the_image_learner_command(podman_image):
    train = _run_in_image(podman_image, "image-learner", "--help")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "--csv-file" in train.stdout and "--image-zip" in train.stdout
    predict = _run_in_image(podman_image, "image-learner", "predict", "--help")
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert "--model" in predict.stdout


def test_the_image_trains_with_two_ddp_workers_on_the_cpu(podman_image, tmp_path):
    """--distributed ddp inside the image (its Python, its Accelerate): 2 gloo CPU processes train the demo's
    tiny model end to end, and the run says so."""
    podman, image = podman_image
    out = tmp_path / "out"
    out.mkdir()
    command = [podman, "run", "--rm", "-v", f"{os.path.join(ROOT, 'test-data')}:/data:ro", "-v", f"{out}:/out",
               "-e", "OMP_NUM_THREADS=1", image, "image-learner",
               "--csv-file", "/data/ham10000_demo_metadata.csv", "--image-zip", "/data/ham10000_demo_images.zip",
               "--output-dir", "/out/run", "--model-name", "test_efficientnet", "--image-size", "32", "--epochs", "1",
               "--batch-size", "8", "--preprocessing-workers", "1", "--no-use-pretrained", "--augmentation", "none",
               "--no-report", "--distributed", "ddp", "--num-workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "MULTI_CPU, num_processes=2" in (out / "run" / "training_log.txt").read_text()  # Ludwig's chatter
    assert "MULTI_CPU" not in done.stdout + done.stderr  # kept off the console
    summary = json.loads((out / "run" / "run_summary.json").read_text())
    assert summary["distributed"] == {"mode": "ddp", "workers": 2} and "2 DDP processes" in summary["device"]
    assert (out / "run" / "trained_model.zip").is_file()
