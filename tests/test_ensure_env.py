"""scripts/ensure_env.sh when runs overlap: two runs started at once build one environment and both get
it; a killed build never sits under the environment's name, and the next run cleans it up and rebuilds.
The script runs on a scratch copy of the checkout with a one-package dependency list and a scratch
IMAGE_LEARNER_ENV_DIR (each build takes some seconds: a venv, pip/setuptools/wheel, one small wheel)."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import ROOT

DEPENDENCY = "six==1.17.0"  # tiny, pure Python
FINAL_NAME = re.compile(r"venv-py\d+\.\d+-[0-9a-f]{16}")  # the script's name for a finished environment


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "ensure_env.sh"), root / "scripts")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "fake-image-learner"\nversion = "0"\ndependencies = ["{DEPENDENCY}"]\n\n'
        '[tool.setuptools]\npy-modules = ["image_learner_cli"]\n')
    (root / "image_learner_cli.py").write_text("def main():\n    return 0\n")
    return root


def _clean_env(**extra):
    """This environment without PYTHONPATH (the tests' own checkout would shadow the scratch one)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


def _start(checkout, env_dir):
    env = _clean_env(IMAGE_LEARNER_ENV_DIR=str(env_dir))
    return subprocess.Popen(["bash", str(checkout / "scripts" / "ensure_env.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _finish(run):
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return out, err


def _check(python, checkout):
    """The printed python is the environment's: it has the dependency and this checkout's command."""
    assert re.fullmatch(r"\S+/bin/python", python) and FINAL_NAME.fullmatch(os.path.basename(os.path.dirname(
        os.path.dirname(python))))
    code = "import six, image_learner_cli; print(six.__version__, image_learner_cli.__file__)"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/", env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [DEPENDENCY.split("==")[1], str(checkout / "image_learner_cli.py")]


def _environments(env_dir):
    """Every environment folder in env_dir, as the real folder it is (a link counts as its target)."""
    return {os.path.realpath(p) for p in env_dir.iterdir() if p.is_dir()}


def test_two_runs_at_once_build_one_environment_and_both_use_it(checkout, tmp_path):
    env_dir = tmp_path / "envs"
    runs = [_start(checkout, env_dir) for _ in range(2)]
    results = [_finish(run) for run in runs]
    pythons = {out.strip() for out, _ in results}
    assert len(pythons) == 1, pythons
    (python,) = pythons
    assert sum("creating environment" in err for _, err in results) == 1, [err for _, err in results]
    _check(python, checkout)
    assert len(_environments(env_dir)) == 1

    # A later run reuses it, and so does one that finds an environment built in place (by the earlier
    # version of the script: a real folder with .complete under the final name).
    final = os.path.dirname(os.path.dirname(python))
    for _ in range(2):
        out, err = _finish(_start(checkout, env_dir))
        assert out.strip() == python and "creating environment" not in err
        _check(python, checkout)
        if os.path.islink(final):
            built = os.path.realpath(final)
            os.remove(final)
            os.rename(built, final)


def test_a_killed_build_is_never_the_environment_and_the_next_run_rebuilds_it(checkout, tmp_path):
    env_dir = tmp_path / "envs"
    run = _start(checkout, env_dir)
    deadline = time.monotonic() + 120
    while not list(env_dir.glob("venv-*/bin/python")):  # the build has begun
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate()
    assert not [p for p in env_dir.iterdir() if FINAL_NAME.fullmatch(p.name)], sorted(os.listdir(env_dir))

    out, err = _finish(_start(checkout, env_dir))
    assert "creating environment" in err
    _check(out.strip(), checkout)
    assert _environments(env_dir) == {os.path.realpath(os.path.dirname(os.path.dirname(out.strip())))}
