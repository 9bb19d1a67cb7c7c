"""The CPUs this job may use, and how many of them the image check takes when the user names no number.

Not ``os.cpu_count()``: on a shared node that is the whole node, and workers sized from it would
oversubscribe the job's share. Used by the command line (``--preprocessing-workers``' default: training's
image-check processes, predict's decoding threads) and by training (``--distributed ddp``'s workers and their
torch threads).
"""

from __future__ import annotations

import os

# --preprocessing-workers' default at most: each worker is a fresh interpreter (~0.35 CPU s to start, 71 MB),
# and past a few workers the parent (collecting every image's hashes, thumbnail and health properties) and the
# scratch disk become the limit: BENCHMARKS.md ("The image check's workers by default") has what was measured
# and what was not.
MAX_DEFAULT_WORKERS = 8


def allocated_cpus(environ=None) -> int:
    """The CPUs this job may use: its affinity mask (what a cgroup cpuset, Slurm or taskset gives it), capped
    by Galaxy's GALAXY_SLOTS when that is a positive number."""
    environ = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (not Linux)
        cpus = os.cpu_count() or 1
    slots = environ.get("GALAXY_SLOTS", "").strip()
    if slots.isdigit() and int(slots) > 0:
        cpus = min(cpus, int(slots))
    return max(1, cpus)


def default_workers(environ=None) -> int:
    """``--preprocessing-workers`` when none is given: the job's CPUs, at most MAX_DEFAULT_WORKERS. The
    check runs before training, alone, so it may take every CPU the job has."""
    return min(allocated_cpus(environ), MAX_DEFAULT_WORKERS)
