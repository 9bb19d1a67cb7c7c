"""``--distributed ddp``: data-parallel training in N processes through Ludwig's own Accelerate strategy.

Why a backend subclass: in Ludwig 0.17.10 no shipped backend ever selects its ``AccelerateStrategy``.
``LocalBackend.initialize`` registers the ``local`` strategy (ludwig/backend/base.py:249), ``LudwigModel.train``
creates the trainer without a strategy (ludwig/api.py:475), so ``Trainer`` falls back to ``LocalStrategy``
(ludwig/trainers/trainer.py:151: world size 1, all-reduce a no-op) and N processes under torchrun would
each train their own copy on all the data. The Ray backend does the same in every Ray worker
(ludwig/backend/ray.py:292-294, ``RemoteTrainer`` without a strategy at :335), so its workers train
separate copies on their shards. ``DataParallelBackend`` is Ludwig's ``LocalBackend`` (a documented
``Backend`` that ``LudwigModel(backend=...)`` accepts) that registers and hands the trainer Ludwig's own
``AccelerateStrategy`` (ludwig/distributed/accelerate.py): Accelerate wraps the model in torch DDP (gradients
averaged across processes in ``backward``), Ludwig's ``DistributedSampler`` gives each rank its shard
(ludwig/data/sampler.py:60), its metrics are gathered across ranks, and only rank 0 saves. Nothing of
Ludwig is patched. tests/test_data_parallel.py proves the synchronisation.

The parent (the user's one command) does everything but training, as in a plain run; only training runs in
``torch.distributed.run`` (torchrun) workers, which read the prepared table from the scratch folder; rank 0
moves the model into place. The parent then loads it with the plain local path, so predictions, metrics,
report and the model ZIP are the single-process code.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from image_learner.job_cpus import allocated_cpus

DISTRIBUTED = ("none", "ddp")
JOB_FILE = "ddp_job.json"
TABLE_FILE = "ddp_table.json"
RESULT_FILE = "ddp_result.json"
STOP_GRACE_S = 30  # after SIGTERM, workers get this long before SIGKILL
JOIN_TIMEOUT_S = 600  # several nodes: how long an agent waits for the others at the rendezvous
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkersFailed(RuntimeError):
    """A training worker died or failed; the others were stopped."""


def check_options(distributed: str, num_workers: int, lr_schedule: str, device: str) -> None:
    """InputError for a combination that cannot run; call before any work."""
    from image_learner.errors import InputError

    if distributed not in DISTRIBUTED:
        raise InputError(f"--distributed must be one of {', '.join(DISTRIBUTED)}, got {distributed!r}")
    if distributed == "none":
        if num_workers != 1:
            raise InputError("--num-workers needs --distributed ddp")
        return
    if num_workers < 2:
        raise InputError(f"--distributed ddp needs --num-workers 2 or more, got {num_workers}")
    try:
        import accelerate  # noqa: F401  Ludwig's AccelerateStrategy needs it
    except ImportError as err:
        raise InputError("--distributed ddp needs Hugging Face Accelerate: pip install 'image-learner[distributed]'"
                         ) from err
    if lr_schedule != "constant":
        # The schedule's length is counted in single-process steps (ludwig_config.learning_rate_scheduler);
        # with N workers an epoch has N times fewer steps, so the decay would stop a fraction of the way.
        raise InputError("--lr-schedule cosine (also --preset best's) is not supported with --distributed ddp; "
                         "add --lr-schedule constant")
    if device == "cuda":
        import torch

        if num_workers > torch.cuda.device_count():
            raise InputError(f"--num-workers {num_workers} with --device cuda needs {num_workers} GPUs, "
                             f"{torch.cuda.device_count()} visible")
    elif num_workers > allocated_cpus():
        raise InputError(f"--num-workers {num_workers} exceeds the {allocated_cpus()} CPUs this job may use "
                         "(its CPU affinity, capped by GALAXY_SLOTS)")


def worker_threads(num_workers: int, cpus: int | None = None) -> int:
    """Torch threads per worker: the job's CPUs shared out, one CPU left for Ludwig's image-decoding threads
    and the parent, so the workers never starve the data loading they wait on."""
    cpus = cpus or allocated_cpus()
    return max(1, (cpus - 1) // num_workers)


def worker_env(num_workers: int, work_dir: str, environ=None) -> dict:
    """The workers' environment: this one less inherited ``ACCELERATE_*`` variables (an outer launcher's
    ACCELERATE_MIXED_PRECISION, ACCELERATE_USE_CPU, ... would change the training behind the tool's own
    options; the backend sets the one it needs), torch threads from the job's allocation, and TMPDIR in the
    scratch folder (torchrun's own torchelastic_* folder lands there too)."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS=str(worker_threads(num_workers)), TMPDIR=work_dir,
               PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, environ.get("PYTHONPATH")])))
    return env


def train(table, config: dict, work_dir: str, model_dir: str, seed: int, task: str, validation_metric: str,
          num_workers: int, target_std: float | None = None):
    """Train in ``num_workers`` processes; returns ludwig_trainer.TrainedModel loaded with the local path."""
    import pandas as pd

    from image_learner.training import ludwig_trainer

    started = time.time()
    job = {"config": config, "work_dir": work_dir, "model_dir": model_dir, "seed": seed, "task": task,
           "validation_metric": validation_metric, "target_std": target_std,
           "table": os.path.join(work_dir, TABLE_FILE),
           "result": os.path.join(work_dir, RESULT_FILE)}
    table.to_json(job["table"], orient="split", index=False)
    job_path = os.path.join(work_dir, JOB_FILE)
    with open(job_path, "w") as handle:
        json.dump(job, handle)
    launch(launch_command(num_workers, ["-m", __spec__.name, "worker", job_path]),
           worker_env(num_workers, work_dir))
    with open(job["result"]) as handle:
        result = json.load(handle)
    history = pd.DataFrame(result["history"])
    model = ludwig_trainer.load_model(model_dir)
    return ludwig_trainer.TrainedModel(model, model_dir, history, result["best_epoch"], result["device"],
                                       time.time() - started)


# The folder holding the image_learner package: the workers run this module with ``python -m`` (it
# imports the package), whether the tool runs from a checkout, Galaxy's tool folder or an installed wheel.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch_command(num_workers: int, script_and_args: list[str], nnodes: int = 1, node_rank: int = 0,
                   rdzv_endpoint: str | None = None) -> list[str]:
    """torchrun, no restarts (a dead worker ends the run). One node: a private rendezvous port. Several
    (``nnodes`` > 1): this node's agent joins a c10d rendezvous at ``rdzv_endpoint`` (HOST:PORT of node 0,
    whose agent hosts the store: ``is_host`` from ``node_rank``, not guessed from host names)."""
    if nnodes == 1:
        rendezvous = ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("several nodes need a rendezvous endpoint HOST:PORT")
        rendezvous = ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", rdzv_endpoint,
                      "--rdzv-conf", f"is_host={str(node_rank == 0).lower()},join_timeout={JOIN_TIMEOUT_S}"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", str(num_workers),
            "--max-restarts", "0", "--monitor-interval", "1", *script_and_args]


def launch(command: list[str], env: dict, timeout_s: float | None = None) -> None:
    """Run torchrun in its own process group; on failure, timeout or a stop signal (an exception here)
    stop every worker (SIGTERM, then SIGKILL) before returning or raising. If this process is killed
    outright (SIGKILL, the OOM killer), the kernel sends torchrun SIGTERM, and torchrun stops its workers.
    The workers' output is read line by line: their own ``[image-learner]`` lines (rank 0's epochs) go to
    the console, the rest where library output goes (the log file, or the console with --verbose); a
    failure names the last error line the workers printed."""
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=_death_signal_setter(signal.SIGTERM))
    tail: collections.deque[str] = collections.deque(maxlen=200)
    reader = threading.Thread(target=_relay, args=(process.stdout, tail), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise WorkersFailed(f"training workers did not finish within {timeout_s:.0f} s; stopped") from None
    except BaseException:
        _stop(process)
        raise
    if code != 0:
        _stop(process)  # torchrun already stops the others when one dies; make sure of it
    reader.join(timeout=10)  # the pipe closes when the last worker has gone
    if code != 0:
        cause = last_error(tail)
        raise WorkersFailed(f"a training worker failed (torchrun exit code {code})"
                            + (f": {cause}" if cause else "") + "; the workers' full output is in the log file")


def _relay(pipe, tail) -> None:
    """Copy the workers' output: our lines to the console, the rest to library output (sys.stdout now)."""
    from image_learner import console

    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace")
        ours = re.sub(r"^\[(rank|default)\d+\]:", "", line)  # torchrun may prefix a worker's lines
        if ours.startswith(console.PREFIX):
            console.echo(ours.rstrip("\n"))
        else:
            tail.append(line.rstrip("\n"))
            sys.stdout.write(line)
            sys.stdout.flush()
    pipe.close()


def last_error(lines) -> str | None:
    """The last ``SomethingError: message`` line of a worker's output (its traceback's last line), shortened;
    torchrun's own report of the failure (ChildFailedError) comes after it and says less."""
    for line in reversed(list(lines)):
        text = line.split("]:", 1)[-1].strip() if line.startswith("[rank") else line.strip()
        if "ChildFailedError" in text or "SignalException" in text:
            continue
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", text):
            return text[:300]
    return None


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun and its workers (one process group), SIGKILL to whatever is left after the grace."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # all gone
        pass


def _death_signal_setter(sig: int):
    """A Popen ``preexec_fn`` that ties the child to this process (None off Linux): see tie_to_parent.
    Its own session keeps the workers out of the terminal's Ctrl-C; this keeps them from outliving us."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, parent = _prctl(), os.getpid()  # resolved before the fork: the child only calls
    return lambda: _set_death_signal(prctl, sig, parent)


def tie_to_parent(sig: int = signal.SIGKILL) -> None:
    """This process gets ``sig`` from the kernel when its parent dies (Linux PR_SET_PDEATHSIG); a worker calls
    it so that a torchrun killed outright takes its workers along. No-op off Linux."""
    if sys.platform.startswith("linux"):
        _set_death_signal(_prctl(), sig, os.getppid())


def _prctl():
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _set_death_signal(prctl, sig: int, parent: int) -> None:
    if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the tie was made: nothing will signal us
        os.kill(os.getpid(), sig)


def make_backend():
    """Ludwig's LocalBackend with Ludwig's AccelerateStrategy registered and given to the trainer."""
    from ludwig.backend.base import LocalBackend
    from ludwig.distributed import init_dist_strategy

    class DataParallelBackend(LocalBackend):
        strategy = None

        def initialize(self):
            # Accelerate reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR and starts the process group:
            # NCCL on GPUs; on the CPU only with its ACCELERATE_USE_CPU flag (what `accelerate launch --cpu`
            # sets), otherwise it silently runs each process alone (DistributedType.NO, world size 1).
            import torch

            if not torch.cuda.is_available():
                os.environ["ACCELERATE_USE_CPU"] = "true"
            init_dist_strategy("accelerate")  # the one Ludwig's metric modules find (metric_modules.py:188)
            self.strategy = _strategy_class()()
            expected = int(os.environ.get("WORLD_SIZE", 1))
            if self.strategy.size() != expected:
                raise RuntimeError(f"Accelerate joined {self.strategy.size()} of {expected} processes "
                                   f"({self.strategy.accelerator.distributed_type}); refusing to train unsynchronised")

        def initialize_pytorch(self, *args, **kwargs):
            import torch

            if torch.cuda.is_available() and kwargs.get("gpus") is None:
                kwargs["gpus"] = int(os.environ.get("LOCAL_RANK", 0))  # one GPU per process
            super().initialize_pytorch(*args, **kwargs)

        def create_trainer(self, config, model, **kwargs):
            return super().create_trainer(config, model, distributed=self.strategy, **kwargs)

        def is_coordinator(self) -> bool:
            return self.strategy.is_coordinator()

    return DataParallelBackend()


def _strategy_class():
    from ludwig.distributed.accelerate import AccelerateStrategy

    class UnwrappingAccelerateStrategy(AccelerateStrategy):
        """Ludwig's AccelerateStrategy, with one fix: its ``to_device`` calls ``model.to_device`` on the DDP wrapper
        its own ``prepare`` returned (ludwig/distributed/accelerate.py:99, called by ludwig/models/predictor.py:219
        on the trainer's ``dist_model``), so training failed at its first evaluation. Move the wrapped model."""

        def to_device(self, model, device=None):
            inner = getattr(model, "module", None)
            if inner is not None and hasattr(inner, "to_device"):
                inner.to_device(device if device is not None else self.accelerator.device)
                return model
            return super().to_device(model, device)

    return UnwrappingAccelerateStrategy


def check_readable(paths, host: str | None = None) -> None:
    """Every worker must read every image (a shared filesystem across nodes): name the first missing one."""
    from image_learner.errors import InputError

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{len(missing)} images are not readable on {host or socket.gethostname()} "
                         f"(first: {missing[0]}): every training worker must see the output directory's "
                         "scratch folder, e.g. on a shared filesystem")


def _worker(job_path: str) -> int:
    tie_to_parent()  # torchrun gone (even by SIGKILL): this worker goes too
    from image_learner import host_allocator

    host_allocator.tune()  # as the command line does in one process
    import pandas as pd

    from image_learner.training import ludwig_trainer
    from image_learner.training.ludwig_config import IMAGE_FEATURE

    with open(job_path) as handle:
        job = json.load(handle)
    table = pd.read_json(job["table"], orient="split", dtype=False)
    check_readable(table[IMAGE_FEATURE])
    rank = int(os.environ.get("RANK", 0))
    work = os.path.join(job["work_dir"], f"rank{rank}")
    os.makedirs(work, exist_ok=True)
    trained = ludwig_trainer.train(table, job["config"], work, job["model_dir"], job["seed"], job["task"],
                                   job["validation_metric"], backend=make_backend(), target_std=job["target_std"])
    if trained is not None:  # rank 0
        world = int(os.environ.get("WORLD_SIZE", 1))
        result = {"history": trained.history.to_dict(orient="list"), "best_epoch": trained.best_epoch,
                  "device": f"{trained.device}; {world} DDP processes"}
        with open(job["result"], "w") as handle:
            json.dump(result, handle)
    return 0


def _node(argv: list[str]) -> int:
    """``python -m image_learner.training.data_parallel node``: one node's torchrun agent for a prepared job (several machines)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m image_learner.training.data_parallel node")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, required=True, help="0 on the node that hosts the rendezvous")
    parser.add_argument("--rdzv-endpoint", required=True, help="HOST:PORT of node 0, reachable from every node")
    parser.add_argument("--num-workers", type=int, required=True, help="processes on this node")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the workers are stopped")
    parser.add_argument("script_and_args", nargs="+", help="the worker: -m image_learner.training.data_parallel worker JOB.json")
    args = parser.parse_args(argv)
    if args.nnodes < 2 or not 0 <= args.node_rank < args.nnodes or args.num_workers < 1:
        parser.error("needs --nnodes 2 or more, 0 <= --node-rank < --nnodes and --num-workers 1 or more")
    work_dir = os.environ.get("TMPDIR") or os.getcwd()
    try:
        launch(launch_command(args.num_workers, args.script_and_args, args.nnodes, args.node_rank,
                              args.rdzv_endpoint), worker_env(args.num_workers, work_dir), timeout_s=args.timeout)
    except WorkersFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        sys.exit(_node(sys.argv[2:]))
    if sys.argv[1:2] != ["worker"] or len(sys.argv) != 3:
        module = "python -m image_learner.training.data_parallel"
        sys.exit(f"usage: {module} worker JOB.json (started by torchrun from image-learner)\n"
                 f"       {module} node --nnodes M --node-rank K --rdzv-endpoint HOST:PORT --num-workers G "
                 "-- SCRIPT [ARGS...]")
    sys.exit(_worker(sys.argv[2]))
