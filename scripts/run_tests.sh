#!/usr/bin/env bash
# The whole test suite: unit and end-to-end tests (pytest), then the Galaxy tools' lint and tests in
# a real Galaxy, inside the tools' container image. Creates the environment and builds the image first
# when they are missing. Extra arguments go to pytest.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
py=$(bash scripts/ensure_env.sh) || exit 1
bash scripts/ensure_chromium.sh || exit 1
# The tools' container image (the image tests and the Galaxy tool tests run in it).
bash scripts/ensure_image.sh >/dev/null || exit 1
log=$(mktemp)
# The tests get a temp dir of their own: the check that they leave nothing behind is then not confused
# by other programs on the machine writing to the shared /tmp.
test_tmp=$(mktemp -d)
trap 'rm -rf "$log" "$test_tmp"' EXIT

TMPDIR=$test_tmp "$py" -m pytest "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

bash scripts/galaxy_tests.sh 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}

# One closing line for both runners (pytest's and planemo's counts added up).
"$py" - "$log" "$status" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
pytest = re.findall(r"^=*\s*(?:(\d+) failed, )?(\d+) passed", text, re.M)
galaxy = re.findall(r"^galaxy: (\d+) passed, (\d+) failed$", text, re.M)
passed = sum(int(p) for _, p in pytest[-1:]) + sum(int(p) for p, _ in galaxy[-1:])
failed = sum(int(f or 0) for f, _ in pytest[-1:]) + sum(int(f) for _, f in galaxy[-1:])
if sys.argv[2] != "0" and failed == 0:
    failed = 1  # the Galaxy step failed before running its tests (e.g. lint)
print(f"all: {passed} passed, {failed} failed")
PY
exit "$status"
