"""--distributed ddp: Ludwig's Accelerate strategy really synchronises 2 gloo processes on the CPU, the
pipeline runs one command end to end, and a dead worker leaves no outputs and no processes.

Needs Hugging Face Accelerate (the ``distributed`` extra, which the test command installs); every
subprocess has a time limit."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from image_learner.training import data_parallel
from conftest import CLI, DEMO_CSV, DEMO_ZIP, ROOT, png_bytes


PROBE = os.path.join(ROOT, "tests", "ddp_step_probe.py")
B = 4  # images per process and step
LR = 0.05
LIMIT_S = 240


def _table(tmp_path, train_rows):
    """train_rows training images of 2 classes (plus 2 validation, 2 test) as PNGs, and the Ludwig table."""
    rows = []
    for i in range(train_rows + 4):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(png_bytes(1000 + i))
        split = 0 if i < train_rows else (1 if i < train_rows + 2 else 2)
        rows.append({"image_path": str(path), "label": "ab"[i % 2], "split": split})
    table_path = str(tmp_path / "table.json")
    pd.DataFrame(rows).to_json(table_path, orient="split", index=False)
    return table_path


def _run(command, out):
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out),
           "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, env=env, timeout=LIMIT_S, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _weights(path):
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(path)).items()}


def _torchrun(backend, table, out, epochs, batch=B, lr=LR):
    _run(data_parallel.launch_command(2, [PROBE, backend, table, str(out), str(batch), str(lr), str(epochs)]), out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch of 2B training images = one step: 2 DDP processes x B, and one process x 2B at Ludwig's
    linearly scaled learning rate (learning_rate_scaling 'linear', its default: lr x world size)."""
    base = tmp_path_factory.mktemp("ddp")
    table = _table(base, 2 * B)
    _torchrun("ddp", table, base / "ddp", epochs=1)
    _run([sys.executable, PROBE, "local", table, str(base / "single"), str(2 * B), str(2 * LR), "1"], base / "single")
    return base


def test_two_gloo_processes_end_with_identical_weights(runs):
    rank0, rank1 = _weights(runs / "ddp" / "rank0.safetensors"), _weights(runs / "ddp" / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)


def test_one_synchronised_step_equals_one_step_on_all_images(runs):
    ddp, single = _weights(runs / "ddp" / "rank0.safetensors"), _weights(runs / "single" / "rank0.safetensors")
    assert ddp.keys() == single.keys()
    start = _weights(runs / "single" / "start0.safetensors")
    assert max(float(np.abs(single[k] - start[k]).max()) for k in single) > 1e-3  # the step did move the weights
    for name in ddp:
        np.testing.assert_allclose(ddp[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_plain_local_backend_under_torchrun_does_not_synchronise(runs, tmp_path):
    """The control: Ludwig's own LocalBackend under torchrun trains one copy per process on all the images
    (2 steps of B per epoch at lr, not one of 2B): its result differs from the synchronised step."""
    table = str(runs / "table.json")
    _torchrun("local", table, tmp_path / "local", epochs=1)
    local, single = _weights(tmp_path / "local" / "rank0.safetensors"), _weights(runs / "single" / "rank0.safetensors")
    largest = max(float(np.abs(local[k] - single[k]).max()) for k in local)
    assert largest > 1e-3


TINY = ["--model-name", "test_efficientnet", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
        "--preprocessing-workers", "1", "--no-use-pretrained", "--augmentation", "none"]


def test_one_command_trains_in_two_processes_and_the_model_predicts_locally(tmp_path):
    """The whole pipeline under --distributed ddp: outputs as usual, a plain local model that predict loads."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, CLI, "--csv-file", DEMO_CSV, "--image-zip", DEMO_ZIP, "--output-dir",
                           str(out), *TINY, "--distributed", "ddp", "--num-workers", "2"], env=env,
                          timeout=2 * LIMIT_S, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MULTI_CPU, num_processes=2" in (out / "training_log.txt").read_text()  # the workers' chatter: in the log
    assert "MULTI_CPU" not in done.stdout + done.stderr
    # rank 0's epoch lines reach the console, once each
    assert re.findall(r"\[image-learner\] epoch (\d)/2:", done.stdout) == ["1", "2"], done.stdout
    assert sorted(os.listdir(out)) == sorted(["config.yaml", "metrics.json", "model", "predictions.csv",
                                              "report.html", "run_summary.json", "split.csv",
                                              "trained_model.zip", "training_history.csv", "training_log.txt"])
    summary = pd.read_json(out / "run_summary.json", typ="series")
    assert summary["distributed"] == {"mode": "ddp", "workers": 2} and "2 DDP processes" in summary["device"]
    import image_learner_cli

    assert image_learner_cli.main(["predict", "--model", str(out / "trained_model.zip"), "--image-zip", DEMO_ZIP,
                                   "--output-dir", str(tmp_path / "pred"), "--csv-file", DEMO_CSV]) == 0
    before = pd.read_csv(out / "predictions.csv")
    after = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    probs = [c for c in before.columns if c.startswith("prob_")]
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy(), atol=1e-5)


def test_a_dead_worker_stops_the_others_and_raises(tmp_path):
    """torchrun with one worker that dies at once and one that would sleep for minutes: WorkersFailed within
    seconds, and no process of the group is left."""
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit(3)\n"
                      "time.sleep(600)\n")
    started = time.time()
    with pytest.raises(data_parallel.WorkersFailed, match="worker failed"):
        data_parallel.launch(data_parallel.launch_command(2, [str(script)]), {**os.environ, "TMPDIR": str(tmp_path)},
                             timeout_s=120)
    assert time.time() - started < 90
    alive = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    assert alive == []


def test_options_are_checked_before_any_work():
    from image_learner.errors import InputError

    with pytest.raises(InputError, match="needs --distributed ddp"):
        data_parallel.check_options("none", 2, "constant", "cpu")
    with pytest.raises(InputError, match="2 or more"):
        data_parallel.check_options("ddp", 1, "constant", "cpu")
    with pytest.raises(InputError, match="cosine"):
        data_parallel.check_options("ddp", 2, "cosine", "cpu")
    with pytest.raises(InputError, match="CPUs"):
        data_parallel.check_options("ddp", 10_000, "constant", "cpu")
    assert data_parallel.worker_threads(2, cpus=2) == 1 and data_parallel.worker_threads(4, cpus=17) == 4


def test_images_every_worker_cannot_read_are_named(tmp_path):
    from image_learner.errors import InputError

    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not readable on node7.*gone.png.*shared filesystem"):
        data_parallel.check_readable([str(tmp_path / "a.png"), str(tmp_path / "gone.png")], host="node7")
