"""The CPUs a job may use, and the image check's default number of workers drawn from them (job_cpus.py)."""

import os

import image_learner_cli
from image_learner import job_cpus


def _node(monkeypatch, cpus: int, allowed: int, slots: str | None) -> None:
    """A node of ``cpus`` CPUs of which the job's affinity allows ``allowed``; GALAXY_SLOTS ``slots``."""
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)), raising=False)
    if slots is None:
        monkeypatch.delenv("GALAXY_SLOTS", raising=False)
    else:
        monkeypatch.setenv("GALAXY_SLOTS", slots)


def test_the_default_workers_are_the_jobs_cpus_up_to_the_cap(monkeypatch):
    _node(monkeypatch, 64, 16, None)  # a GPU box's command line: 16 CPUs, capped
    assert job_cpus.allocated_cpus() == 16 and job_cpus.default_workers() == job_cpus.MAX_DEFAULT_WORKERS == 8
    _node(monkeypatch, 64, 16, "3")  # a Galaxy job given 3 slots
    assert job_cpus.default_workers() == 3
    _node(monkeypatch, 64, 1, "12")  # one CPU by affinity: the slots cannot add any
    assert job_cpus.default_workers() == 1
    _node(monkeypatch, 64, 6, "0")  # junk slots are ignored
    assert job_cpus.default_workers() == 6


def test_both_commands_take_that_default_and_a_number_given_wins(monkeypatch):
    _node(monkeypatch, 64, 5, None)
    assert image_learner_cli.build_parser().get_default("preprocessing_workers") == 5
    assert image_learner_cli.build_predict_parser().get_default("preprocessing_workers") == 5
    _node(monkeypatch, 64, 64, "2")
    assert image_learner_cli.build_parser().get_default("preprocessing_workers") == 2
    args = image_learner_cli.build_predict_parser().parse_args(
        ["--model", "m.zip", "--image-zip", "i.zip", "--output-dir", "o", "--preprocessing-workers", "7"])
    assert args.preprocessing_workers == 7
