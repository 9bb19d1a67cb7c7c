#!/usr/bin/env bash
# The Galaxy tools in a real Galaxy, run the way a server runs them: planemo lint (warnings fail),
# shed_lint and workflow_lint, then every tool test of both tools and the train -> predict workflow's test
# (workflows/*.gxwf.yml with its *.gxwf-tests.yml) with planemo test against Galaxy 26.1 installed from PyPI
# (../shared/galaxy-testing/galaxy_ci.sh), each job inside the tools' container image (built from the
# Dockerfile by scripts/ensure_image.sh when missing) through Galaxy's Docker support, podman standing in
# for docker. No <requirement> is resolved outside the image: a job has only what the image holds.
#
# planemo test has no time limit of its own. A try that runs over GALAXY_TESTS_TIMEOUT seconds (default
# 1800; the tools' tests take about 6 minutes on an idle 2-core machine, 20 under a load of 8, and the
# workflow's about 3 more: 5 minutes alone, Galaxy's start included) is stopped together
# with everything it started (planemo, Galaxy's gunicorn and celery, job scripts, containers). A try that
# timed out or ran no test (Galaxy did not start, ...) is repeated once, after printing why it failed; a
# try whose tests ran and failed is not: a failing test is a finding, not a hiccup to retry away.
# GALAXY_TESTS_OUTPUT_DIR=DIR keeps planemo's reports (each job's command line, output, metrics).
# GALAXY_TESTS_ONLY=tools or =workflow runs only those tests (every lint still runs); empty: all of them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ci_script=${GALAXY_CI_SCRIPT:-$here/../shared/galaxy-testing/galaxy_ci.sh}
[ -f "$ci_script" ] || { echo "error: $ci_script not found (shared/ must sit beside the checkout)" >&2; exit 1; }
prefix=${GXCI_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/galaxy-tool-ci}
limit=${GALAXY_TESTS_TIMEOUT:-1800}
tools=(image_learner.xml image_learner_predict.xml)
workflows=(workflows/image_learner_train_predict.gxwf.yml)
# What planemo test runs, in one Galaxy session each: the tools' own tests, then the workflow's (which uses
# the two tools: they are loaded into Galaxy with --extra_tools, without their tests). One session for both
# crashes planemo 0.75.47 ("'dict' object has no attribute 'structured_data'", measured), so two.
case "${GALAXY_TESTS_ONLY:-}" in
    "") phases=(tools workflow) ;;
    tools | workflow) phases=("$GALAXY_TESTS_ONLY") ;;
    *) echo "error: GALAXY_TESTS_ONLY must be empty, 'tools' or 'workflow', not '$GALAXY_TESTS_ONLY'" >&2; exit 1 ;;
esac
phase_targets() {
    case "$1" in
        tools) targets=("${tools[@]}") ;;
        workflow) targets=("${workflows[@]}" --extra_tools "${tools[0]}" --extra_tools "${tools[1]}") ;;
    esac
}

image=$(bash "$here/scripts/ensure_image.sh")
# Galaxy and planemo (installed once, cached in $prefix; galaxy_ci.sh without arguments only installs)
GXCI_PREFIX=$prefix bash "$ci_script" >/dev/null 2>&1 || GXCI_PREFIX=$prefix bash "$ci_script"
planemo=$prefix/planemo-venv/bin/planemo
py=$prefix/planemo-venv/bin/python

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$here"
echo "== planemo lint"
"$planemo" lint --fail_level warn "${tools[@]}"
echo "== planemo shed_lint"
# shed_lint checks that the repository URL ends with the tool folder's name: lint a copy of the
# checkout's files in tools/image_learner, as in tools-iuc.
mkdir -p "$work/tools/image_learner"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/tools/image_learner"
(cd "$work/tools/image_learner" && "$planemo" shed_lint --tools --skip version_bumped .)
echo "== planemo workflow_lint"
"$planemo" workflow_lint --fail_level warn "${workflows[@]}"

# Ends what a try left running: the processes that carry its marker in their environment (planemo's
# daemon monitor, Galaxy's gunicorn and celery, job scripts) and the containers labelled with it.
stop_try() {
    local marker=$1 signal pid pids ids
    for signal in TERM KILL; do
        pids=()
        for pid in /proc/[0-9]*; do
            pid=${pid#/proc/}
            if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "IMAGE_LEARNER_GALAXY_TRY=$marker"; then
                pids+=("$pid")
            fi
        done
        [ "${#pids[@]}" -gt 0 ] || break
        echo "stopping ${#pids[@]} process(es) the try left: ${pids[*]} (SIG$signal)" >&2
        kill -s "$signal" "${pids[@]}" 2>/dev/null || true
        sleep 5
    done
    ids=$(podman ps -aq --filter "label=org.image-learner.galaxy-try=$marker" 2>/dev/null || true)
    if [ -n "$ids" ]; then
        echo "removing the container(s) the try left: $ids" >&2
        # shellcheck disable=SC2086  # one id per word
        podman rm -f $ids >/dev/null 2>&1 || true
    fi
}

# One try of planemo test of phase $1 (targets set by phase_targets) in the container; its files go to
# $work/$1-try$2.
run_try() {
    local dir=$work/$1-try$2 marker
    marker="$$-$1-$2-$(date +%s)"
    mkdir -p "$dir"
    local status=0
    IMAGE_LEARNER_GALAXY_TRY=$marker GXCI_PREFIX=$prefix timeout -k 30 "$limit" bash "$ci_script" "${targets[@]}" \
        --docker --docker_cmd /usr/bin/docker \
        --docker_run_extra_arguments "--label org.image-learner.galaxy-try=$marker" \
        --no_dependency_resolution --test_timeout 900 \
        --test_output_json "$dir/tool_test_output.json" --test_output "$dir/tool_test_output.html" \
        --test_output_xunit "$dir/xunit.xml" >"$dir/planemo.log" 2>&1 || status=$?
    stop_try "$marker"
    return "$status"
}

# Galaxy's server log is long: the end of it, without the access log.
log_tail() { grep -vE "uvicorn.access|display_applications" "$1" | tail -"${2:-60}"; }

started=$(date +%s)
status=0
reports=()
for phase in "${phases[@]}"; do
    phase_targets "$phase"
    echo "== planemo test: $phase (real Galaxy, every job in $image)"
    phase_status=0
    run_try "$phase" 1 || phase_status=$?
    if [ "$phase_status" -ne 0 ] && { [ "$phase_status" -eq 124 ] || [ "$phase_status" -eq 137 ] \
            || [ ! -s "$work/$phase-try1/tool_test_output.json" ]; }; then
        if [ "$phase_status" -eq 124 ] || [ "$phase_status" -eq 137 ]; then
            echo "== the first try ran over ${limit} s and was stopped; its log ends with:"
        else
            echo "== the first try ran no test (exit $phase_status); its log ends with:"
        fi
        log_tail "$work/$phase-try1/planemo.log" 40
        echo "== planemo test, second try"
        phase_status=0
        run_try "$phase" 2 || phase_status=$?
    fi
    final=$(ls -d "$work/$phase"-try* | tail -1)
    [ "$phase_status" -eq 0 ] || log_tail "$final/planemo.log" 60
    [ -s "$final/tool_test_output.json" ] || echo '{"tests": []}' >"$final/tool_test_output.json"
    # planemo's reports (JSON with each job's command line, stdout, stderr and metrics; HTML; xunit), if wanted
    if [ -n "${GALAXY_TESTS_OUTPUT_DIR:-}" ]; then
        mkdir -p "$GALAXY_TESTS_OUTPUT_DIR/$phase" && cp "$final"/* "$GALAXY_TESTS_OUTPUT_DIR/$phase"/
    fi
    reports+=("$final/tool_test_output.json")
    [ "$phase_status" -eq 0 ] || status=$phase_status
done
"$py" - "$(( $(date +%s) - started ))" "${reports[@]}" <<'PY'
import json, sys
from datetime import datetime
tests = [t for path in sys.argv[2:] for t in json.load(open(path)).get("tests", [])]
passed = sum(1 for t in tests if t.get("data", {}).get("status") == "success")
failed = len(tests) - passed
def seconds(data):
    """A tool test's time_seconds; a workflow test has none, only its start and end."""
    if data.get("time_seconds") is None and data.get("start_datetime") and data.get("end_datetime"):
        start, end = (datetime.fromisoformat(data[key]) for key in ("start_datetime", "end_datetime"))
        return (end - start).total_seconds()
    return float(data.get("time_seconds") or 0)
for t in tests:
    data = t.get("data", {})
    print(f"{data.get('status', '?'):>8} {seconds(data):6.1f} s  {t.get('id')}")
for t in tests:
    data = t.get("data", {})
    if data.get("status") != "success":
        print(f"FAILED {t.get('id')}: {data.get('output_problems')} {data.get('execution_problem') or ''}")
        # a tool test has one job; a workflow test one per step, in its invocation's details
        steps = ((data.get("invocation_details") or {}).get("steps") or {}).values()
        for job in [data.get("job") or {}] + [j for step in steps for j in step.get("jobs") or []]:
            if job.get("stderr"):
                print(f"{job.get('tool_id') or ''} stderr: {job['stderr'][-2000:]}")
workflow_tests = sum(1 for t in tests if ".gxwf.yml" in str(t.get("id")))
print(f"planemo test took {sys.argv[1]} s for {len(tests)} tests ({len(tests) - workflow_tests} tool tests, "
      f"{workflow_tests} workflow tests), every job in the container")
print(f"galaxy: {passed} passed, {failed} failed")
sys.exit(1 if failed or not tests else 0)
PY
exit "$status"
