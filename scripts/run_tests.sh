#!/usr/bin/env bash
# The whole test suite: unit and end-to-end tests (pytest), then the Galaxy tool's lint and tests in
# a real Galaxy. Creates the environment first when it is missing. Extra arguments go to pytest.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
py=$(bash scripts/ensure_env.sh) || exit 1
if [ -f scripts/ensure_chromium.sh ]; then bash scripts/ensure_chromium.sh || exit 1; fi

"$py" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

if [ -f scripts/galaxy_tests.sh ]; then
    bash scripts/galaxy_tests.sh || exit 1
fi
