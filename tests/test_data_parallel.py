"""--distributed ddp: Ludwig's Accelerate strategy really synchronises 2 gloo processes on the CPU, the
pipeline runs one command end to end, and a dead worker leaves no outputs and no processes.

Needs Hugging Face Accelerate (the ``distributed`` extra, which the test command installs); every
subprocess has a time limit."""

import json
import os
import signal
import socket
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


def _steps(folder, rank):
    return json.loads((folder / f"steps{rank}.json").read_text())


def test_each_rank_steps_on_its_own_half_and_both_end_with_the_step_on_all_images(runs):
    """Equal weights on both ranks alone prove nothing (the unsynchronised control below has them too: each
    process trains alone on all the images): here each rank took ONE step of B images, i.e. saw only its
    half of the 2B, and yet both hold the single-process step on all 2B images."""
    assert [_steps(runs / "ddp", r) for r in (0, 1)] == [{"steps": 1, "world": 2}] * 2
    rank0, rank1 = _weights(runs / "ddp" / "rank0.safetensors"), _weights(runs / "ddp" / "rank1.safetensors")
    single = _weights(runs / "single" / "rank0.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
        np.testing.assert_allclose(rank1[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)


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
    # each process alone, on all 2B images (2 steps), and the two copies are nevertheless identical
    assert [_steps(tmp_path / "local", r) for r in (0, 1)] == [{"steps": 2, "world": 1}] * 2
    other = _weights(tmp_path / "local" / "rank1.safetensors")
    assert all(np.array_equal(local[k], other[k]) for k in local)


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
    assert sorted(os.listdir(out)) == sorted(["config.yaml", "embeddings.csv", "label_issues.csv", "metrics.json",
                                              "model", "predictions.csv",
                                              "report.html", "run_summary.json", "split.csv",
                                              "trained_model.zip", "training_history.csv", "training_log.txt",
                                              "data_health.csv"])
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


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_node_agents_on_a_c10d_rendezvous_equal_the_single_node_run(runs, tmp_path):
    """Several machines, played on this one: two `data_parallel.py node` agents (1 CPU process each) meet at a
    c10d rendezvous on 127.0.0.1; their one synchronised step equals the single-node 2-process run's."""
    out = tmp_path / "nodes"
    out.mkdir()
    endpoint = f"127.0.0.1:{_free_port()}"
    args = [PROBE, "ddp", str(runs / "table.json"), str(out), str(B), str(LR), "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out), "PYTHONPATH": ROOT}
    agents = [subprocess.Popen([sys.executable, "-m", "image_learner.training.data_parallel", "node", "--nnodes", "2",
                                "--node-rank", str(k), "--rdzv-endpoint", endpoint, "--num-workers", "1",
                                "--timeout", str(LIMIT_S), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    try:
        logs = [agent.communicate(timeout=LIMIT_S + 60)[0] for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert [_steps(out, r) for r in (0, 1)] == [{"steps": 1, "world": 2}] * 2
    one_node = _weights(runs / "ddp" / "rank0.safetensors")
    for rank in (0, 1):
        two_nodes = _weights(out / f"rank{rank}.safetensors")
        assert two_nodes.keys() == one_node.keys()
        for name in one_node:
            np.testing.assert_array_equal(two_nodes[name], one_node[name], err_msg=name)


def _alive(pid):
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, limit_s):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_do_not_outlive_a_sigkilled_parent(tmp_path):
    """The command killed outright (SIGKILL, the OOM killer): torchrun and its 2 workers (which would sleep for
    10 minutes) are gone within a bounded time, not left training without anyone to read their result."""
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys, time\n"
                      f"open(os.path.join({str(tmp_path)!r}, 'pid' + os.environ['RANK']), 'w')"
                      ".write(f'{os.getpid()} {os.getppid()}')\n"
                      "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import os, sys\nfrom image_learner.training import data_parallel\n"
                               "data_parallel.launch(data_parallel.launch_command(2, [sys.argv[1]]), "
                               "{**os.environ, 'TMPDIR': sys.argv[2]}, timeout_s=300)", str(worker), str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    pids = []
    try:
        assert _wait_for(lambda: all((tmp_path / f"pid{r}").exists() for r in (0, 1)), 120), "workers did not start"
        time.sleep(0.5)  # the pid files are complete
        for rank in (0, 1):
            pids += [int(p) for p in (tmp_path / f"pid{rank}").read_text().split()]
        pids = sorted(set(pids))  # 2 workers and their torchrun
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 60), [p for p in pids if _alive(p)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids:  # what an old version would leave: ended by pid, never by name
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_tied_to_its_parent_dies_with_it(tmp_path):
    """tie_to_parent, which every worker calls first: its torchrun killed outright takes the worker along."""
    child = ("import os, time\nfrom image_learner.training import data_parallel\n"
             "data_parallel.tie_to_parent()\n"
             "print(os.getpid(), flush=True)\n"
             "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
                               "time.sleep(600)\n", child],
                              env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_for(lambda: not _alive(pid), 10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_workers_get_no_inherited_accelerate_settings(tmp_path, monkeypatch):
    """An outer launcher's ACCELERATE_* variables (mixed precision, CPU, ...) would change the training behind
    the tool's options: train() hands the workers an environment without them; the rest is kept."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    monkeypatch.setenv("IMAGE_LEARNER_MARKER", "kept")
    seen = {}

    def fake_launch(command, env, timeout_s=None):
        seen.update(command=command, env=env)
        raise data_parallel.WorkersFailed("stop here")

    monkeypatch.setattr(data_parallel, "launch", fake_launch)
    with pytest.raises(data_parallel.WorkersFailed, match="stop here"):
        data_parallel.train(pd.DataFrame({"image_path": ["a.png"], "label": ["a"], "split": [0]}), {},
                            str(tmp_path), str(tmp_path / "model"), 1, "binary", "accuracy", 2)
    assert [k for k in seen["env"] if k.startswith("ACCELERATE_")] == []
    assert seen["env"]["IMAGE_LEARNER_MARKER"] == "kept" and seen["env"]["TMPDIR"] == str(tmp_path)


def test_thread_counts_come_from_the_jobs_allocation_not_the_node(monkeypatch):
    """A 64-CPU node of which the job may use 9 (affinity) or 4 (GALAXY_SLOTS): the workers' threads and the
    --num-workers check follow the job's share, never os.cpu_count()."""
    from image_learner.errors import InputError

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(9)), raising=False)
    monkeypatch.delenv("GALAXY_SLOTS", raising=False)
    assert data_parallel.allocated_cpus() == 9 and data_parallel.worker_threads(2) == 4
    monkeypatch.setenv("GALAXY_SLOTS", "4")
    assert data_parallel.allocated_cpus() == 4 and data_parallel.worker_threads(2) == 1
    assert data_parallel.worker_env(2, "/scratch", dict(os.environ))["OMP_NUM_THREADS"] == "1"
    data_parallel.check_options("ddp", 4, "constant", "cpu")
    with pytest.raises(InputError, match="--num-workers 5 exceeds the 4 CPUs this job may use"):
        data_parallel.check_options("ddp", 5, "constant", "cpu")
    monkeypatch.setenv("GALAXY_SLOTS", "32")  # more slots than the affinity allows: the affinity holds
    assert data_parallel.allocated_cpus() == 9
    for junk in ("", "0", "-3", "many"):
        monkeypatch.setenv("GALAXY_SLOTS", junk)
        assert data_parallel.allocated_cpus() == 9


def test_the_node_agent_refuses_an_impossible_cluster():
    """`data_parallel.py node` exits 2 naming the rule before starting anything."""
    base = [sys.executable, "-m", "image_learner.training.data_parallel", "node", "--rdzv-endpoint", "127.0.0.1:1",
            "--num-workers", "1"]
    for cluster in (["--nnodes", "1", "--node-rank", "0"], ["--nnodes", "2", "--node-rank", "2"]):
        done = subprocess.run([*base, *cluster, "worker.py"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": ROOT})
        assert done.returncode == 2 and "--nnodes 2 or more, 0 <= --node-rank < --nnodes" in done.stderr
