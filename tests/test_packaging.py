"""Packaging: the wheel (pyproject.toml) and the Galaxy tool (macros.xml's required_files) ship exactly the
runtime files of the checkout, and the installed wheel trains and writes its report without the checkout."""

import glob
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from galaxy.tool_util.parser import get_tool_source

from conftest import DEMO_CSV, DEMO_ZIP, ROOT

PACKAGE = "image_learner"
ENTRY_MODULES = {"image_learner_cli.py", "report_builder.py", "split_utils.py"}  # stay at the root (README)
SETUP_ONLY = {"setup.py"}  # build scripts at the root, never imported at run time (none today)


def runtime_files() -> set[str]:
    """What a run needs, derived from the checkout: every *.py at the root and every file of the package
    (modules and report templates; no caches)."""
    modules = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))} - SETUP_ONLY
    package = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        package.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files if not f.endswith(".pyc"))
    assert f"{PACKAGE}/report/templates/report.html.j2" in package
    return modules | package


def test_the_root_holds_only_the_entry_modules():
    assert {f for f in runtime_files() if "/" not in f} == ENTRY_MODULES


def test_pyproject_lists_the_entry_modules_and_the_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        setuptools = tomllib.load(handle)["tool"]["setuptools"]
    assert {f"{m}.py" for m in setuptools["py-modules"]} == {f for f in runtime_files() if "/" not in f}
    assert setuptools["packages"]["find"]["include"] == [PACKAGE, f"{PACKAGE}.*"]
    # every folder of the package with modules is a package (else find would leave it out of the wheel)
    for folder in {os.path.dirname(f) for f in runtime_files() if f.endswith(".py") and "/" in f}:
        assert os.path.exists(os.path.join(ROOT, folder, "__init__.py")), folder


@pytest.mark.parametrize("tool", ["image_learner.xml", "image_learner_predict.xml"])
def test_galaxy_stages_exactly_the_runtime_files(tool):
    source = get_tool_source(os.path.join(ROOT, tool), macro_paths=[ROOT])
    staged = {os.path.normpath(el.get("path")) for el in source.root.iter("include")}
    assert staged == runtime_files()


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built as the README's users build it. From a copy of the checkout: setuptools writes
    build/ and *.egg-info/ into the source tree, and the tests leave nothing in the checkout."""
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "demo_output", "test-data"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-cache-dir", "--no-deps", "--no-build-isolation",
          "-w", str(dist), "."], cwd=source)
    (path,) = dist.glob("image_learner-*.whl")
    return path


@pytest.fixture(scope="module")
def target(wheel, tmp_path_factory):
    """The wheel installed into a plain folder outside any checkout."""
    folder = tmp_path_factory.mktemp("target")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps", "--target", str(folder),
          str(wheel)])
    return folder


def test_the_wheel_holds_exactly_the_runtime_files(wheel):
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    assert shipped == runtime_files()


# Run in a subprocess with only the target providing the project's modules. The shared environment
# holds an editable install of some checkout (a .pth path entry or an import hook): both are removed
# before anything is imported, and every module the run loaded is then checked to come from the target.
ISOLATED = """
import os, sys
target, names = sys.argv[1], set(sys.argv[2].split(","))
def provides_ours(path):
    path = os.path.abspath(path or os.getcwd())
    return any(os.path.exists(os.path.join(path, n + ".py")) or os.path.isdir(os.path.join(path, n)) for n in names)
sys.path[:] = [target] + [p for p in sys.path if not provides_ours(p)]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(type(f), "__module__", "")]
def check_origins():
    for name in names & set(sys.modules):
        origin = os.path.realpath(sys.modules[name].__file__)
        assert origin.startswith(os.path.realpath(target) + os.sep), (name, origin)
"""


def _isolated_python(target, code, cwd, argv=()):
    names = {os.path.splitext(f)[0] for f in runtime_files() if "/" not in f} | {PACKAGE}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: no PYTHONPATH, no user site, no current directory on sys.path.
    return _run([sys.executable, "-I", "-c", ISOLATED + code, str(target), ",".join(sorted(names)), *argv],
                cwd=cwd, env=env)


def test_the_installed_wheel_runs_its_command_and_writes_a_report(target, tmp_path):
    script = target / "bin" / "image-learner"  # the console script pip wrote from [project.scripts]
    code = "import runpy\nsys.argv = sys.argv[3:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n" \
           "except SystemExit:\n    check_origins()\n    raise\n"
    result = _isolated_python(target, code, tmp_path, [str(script), "--help"])
    assert result.stdout.startswith("usage: image-learner") and "--csv-file" in result.stdout

    out = tmp_path / "run"
    code = "import image_learner_cli\ncode = image_learner_cli.main(sys.argv[3:])\n" \
           "assert 'image_learner.report.report_images' in sys.modules\ncheck_origins()\nsys.exit(code)\n"
    _isolated_python(target, code, tmp_path, [
        "--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir", str(out), "--model-name",
        "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "16",
        "--preprocessing-workers", "1"])
    assert (out / "report.html").stat().st_size > 100_000
    assert (out / "trained_model.zip").exists()
