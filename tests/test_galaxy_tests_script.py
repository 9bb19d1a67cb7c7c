"""scripts/galaxy_tests.sh never waits forever: a planemo run that hangs is stopped at its time limit with
everything it started, retried once, and the reason is printed. Galaxy is replaced by a stand-in that
hangs (GALAXY_CI_SCRIPT / GXCI_PREFIX are the script's own settings), so this runs in seconds."""

import os
import subprocess
import sys
import time
import uuid

from conftest import ROOT

HANGING_GALAXY = """#!/usr/bin/env bash
# Stand-in for galaxy_ci.sh: installing (no arguments) succeeds; a test run starts a server in a session
# of its own (as Galaxy's gunicorn and celery are: out of reach of timeout's process group) and hangs.
[ "$#" -eq 0 ] && exit 0
echo "galaxy stand-in: starting"
setsid sleep 1000 &
sleep 1000
"""


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if f"GALAXY_STAND_IN={token}".encode() in handle.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_hanging_planemo_run_is_stopped_retried_once_and_explained(tmp_path):
    prefix = tmp_path / "prefix"
    bin_dir = prefix / "planemo-venv" / "bin"
    bin_dir.mkdir(parents=True)
    planemo = bin_dir / "planemo"
    planemo.write_text("#!/bin/sh\nexit 0\n")  # lint and shed_lint pass
    planemo.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    galaxy = tmp_path / "galaxy_ci.sh"
    galaxy.write_text(HANGING_GALAXY)
    token = uuid.uuid4().hex
    env = {**os.environ, "GALAXY_CI_SCRIPT": str(galaxy), "GXCI_PREFIX": str(prefix),
           "GALAXY_TESTS_TIMEOUT": "4", "GALAXY_STAND_IN": token}
    started = time.time()
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "galaxy_tests.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the first try ran over 4 s and was stopped; its log ends with:" in output
    assert "galaxy stand-in: starting" in output  # why: the end of the first try's log
    assert "== planemo test, second try" in output
    assert output.count("process(es) the try left") >= 2  # each try's server was found and stopped
    assert "galaxy: 0 passed, 0 failed" in output
    assert time.time() - started < 200
    assert _processes_with(token) == []


RECORDING_GALAXY = """#!/usr/bin/env bash
# Stand-in for galaxy_ci.sh: installing succeeds; a test run records its arguments and reports one passed
# workflow test (planemo gives a workflow test a start and an end, no time_seconds).
[ "$#" -eq 0 ] && exit 0
echo "$@" >> "$RECORD_DIR/galaxy_args"
while [ "$#" -gt 0 ]; do [ "$1" = --test_output_json ] && out=$2; shift; done
echo '{"tests": [{"id": "image_learner_train_predict.gxwf.yml_0", "data": {"status": "success",
  "start_datetime": "2026-01-01T00:00:00", "end_datetime": "2026-01-01T00:03:04"}}]}' > "$out"
"""


def _run_recording(tmp_path, only):
    """galaxy_tests.sh with GALAXY_TESTS_ONLY=only, planemo and Galaxy replaced by stand-ins that record
    their arguments: (result, planemo's calls, galaxy_ci.sh's arguments of each test session)."""
    prefix = tmp_path / "prefix"
    bin_dir = prefix / "planemo-venv" / "bin"
    bin_dir.mkdir(parents=True)
    planemo = bin_dir / "planemo"
    planemo.write_text('#!/bin/sh\necho "$@" >> "$RECORD_DIR/planemo_calls"\n')
    planemo.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    galaxy = tmp_path / "galaxy_ci.sh"
    galaxy.write_text(RECORDING_GALAXY)
    env = {**os.environ, "GALAXY_CI_SCRIPT": str(galaxy), "GXCI_PREFIX": str(prefix), "RECORD_DIR": str(tmp_path),
           "GALAXY_TESTS_ONLY": only}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "galaxy_tests.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    calls = (tmp_path / "planemo_calls").read_text().splitlines() if (tmp_path / "planemo_calls").exists() else []
    sessions = ([line.split() for line in (tmp_path / "galaxy_args").read_text().splitlines()]
                if (tmp_path / "galaxy_args").exists() else [])
    return result, calls, sessions


def test_the_workflow_is_linted_and_tested_alone_with_the_tools_loaded(tmp_path):
    result, calls, sessions = _run_recording(tmp_path, "workflow")
    (args,) = sessions
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "workflow_lint --fail_level warn workflows/image_learner_train_predict.gxwf.yml" in calls
    assert any(call.startswith("lint --fail_level warn image_learner.xml") for call in calls)  # lints still run
    # only the workflow's test; its two tools loaded without their tests
    assert args[:5] == ["workflows/image_learner_train_predict.gxwf.yml", "--extra_tools", "image_learner.xml",
                        "--extra_tools", "image_learner_predict.xml"]
    assert "184.0 s  image_learner_train_predict.gxwf.yml_0" in output
    assert "for 1 tests (0 tool tests, 1 workflow tests)" in output
    assert result.stdout.rstrip().endswith("galaxy: 1 passed, 0 failed")  # the closing line


def test_by_default_the_tools_then_the_workflow_are_tested_in_two_galaxy_sessions(tmp_path):
    """planemo 0.75.47 crashes on tool and workflow tests in one session: the tools' tests, then the workflow's;
    the closing line counts both sessions' tests."""
    result, _, sessions = _run_recording(tmp_path, "")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    tools, workflow = sessions
    assert tools[:3] == ["image_learner.xml", "image_learner_predict.xml", "--docker"]
    assert workflow[:5] == ["workflows/image_learner_train_predict.gxwf.yml", "--extra_tools", "image_learner.xml",
                            "--extra_tools", "image_learner_predict.xml"]
    assert "== planemo test: tools" in output and "== planemo test: workflow" in output
    assert result.stdout.rstrip().endswith("galaxy: 2 passed, 0 failed")  # one stand-in test per session


def test_an_unknown_subset_is_refused(tmp_path):
    result, calls, _ = _run_recording(tmp_path, "everything")
    assert result.returncode == 1
    assert "GALAXY_TESTS_ONLY must be empty, 'tools' or 'workflow', not 'everything'" in result.stderr
    assert calls == []
