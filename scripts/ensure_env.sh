#!/usr/bin/env bash
# Creates (once) and prints the path of the Python environment the project runs in.
# The environment lives outside the clone, keyed by a hash of the dependency list, so fresh clones
# (CI) reuse it; a changed dependency list gets a new one. Override the location with
# IMAGE_LEARNER_ENV_DIR. Runs started together wait for one build (a lock beside the environment), and
# an environment appears under its name only when complete. All progress goes to stderr; stdout is
# only the environment's python.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

version_ok() {  # true when "$@" runs a Python >= 3.12
    "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand v root want
    # The version the stack is tested on: pyproject.toml's [tool.image-learner] python-env (3.12; the
    # container's is python-image there). A newer one is accepted after it.
    want=$(sed -n 's/^python-env *= *"\([0-9.]*\)".*/\1/p' "$here/pyproject.toml" | head -1)
    for cand in "python${want:-3.12}" python3 python3.13; do
        if command -v "$cand" >/dev/null 2>&1 && version_ok "$cand"; then
            command -v "$cand"; return 0
        fi
    done
    # pyenv shims refuse versions that are installed but not selected: ask pyenv directly.
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -V); do
            for cand in "$root/versions/$v/bin/python3" "$root/versions/$v/bin/python"; do
                if [ -x "$cand" ] && version_ok "$cand"; then echo "$cand"; return 0; fi
            done
        done
    fi
    return 1
}

base_python=$(find_python) || {
    echo "error: image-learner needs Python >= 3.12 (none found on PATH or through pyenv)" >&2
    exit 1
}

# The dependency list (runtime + test extra) decides the environment; the project itself is
# installed editable on top, so source changes never need a rebuild.
deps=$("$base_python" - "$here/pyproject.toml" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})

def expand(requirements):  # "image-learner[distributed]" in the test extra: that extra's own pins
    for requirement in requirements:
        own = re.fullmatch(re.escape(project["name"]) + r"\[([^\]]+)\]", requirement.strip())
        if own:
            for extra in own.group(1).split(","):
                yield from expand(extras[extra.strip()])
        else:
            yield requirement

deps = list(project["dependencies"]) + list(expand(extras.get("test", [])))
print("\n".join(deps))
PY
)
pyver=$("$base_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$(printf '%s\n%s\n' "$pyver" "$deps" | sha256sum | cut -c1-16)
env_root=${IMAGE_LEARNER_ENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-learner}
venv="$env_root/venv-py$pyver-$key"

mkdir -p "$env_root"

# One run at a time per environment: a second run waits for the first one's build instead of deleting
# it. flock(2) through Python (no util-linux needed): the lock belongs to the open file, which this
# shell keeps as fd 9 until it exits, so the kernel releases it even when the run is killed.
exec 9>>"$venv.lock"
lock() {  # lock fd 9; with an argument: fail at once instead of waiting
    "$base_python" -c 'import fcntl, sys; fcntl.flock(9, fcntl.LOCK_EX | (fcntl.LOCK_NB if sys.argv[1:] else 0))' "$@"
}
if ! lock now 2>/dev/null; then
    echo "image-learner: waiting for another run preparing $venv" >&2
    lock || { echo "error: cannot lock $venv.lock" >&2; exit 1; }
fi

if [ ! -f "$venv/.complete" ]; then
    echo "image-learner: creating environment $venv (first run only, a few minutes)" >&2
    # What killed runs left (no build runs now: we hold the lock): unfinished build folders, a link
    # being swapped in, an unfinished environment built in place by earlier versions of this script.
    rm -rf "$venv" "$venv"-build-* "$venv"-link-*
    # Built under a temporary name and published complete by one atomic rename. Venvs are not
    # relocatable (pip writes the interpreter's absolute path into console scripts), so the build
    # folder stays where it is and the final name becomes a symlink to it.
    build="$venv-build-$$"
    trap 'if [ ! -f "$build/.complete" ]; then rm -rf "$build"; fi' EXIT
    "$base_python" -m venv "$build"
    "$build/bin/python" -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location 'file:" >&2 || true
    mapfile -t dep_array <<<"$deps"
    # pip's log is filtered of its warnings about this machine's absent local mirrors.
    log="$env_root/install-$key.log"
    if ! "$build/bin/python" -m pip install -q "${dep_array[@]}" >"$log" 2>&1; then
        grep -v "^WARNING: Location 'file:" "$log" >&2 || true
        echo "error: installing dependencies failed (log: $log)" >&2
        exit 1
    fi
    grep -v "^WARNING: Location 'file:" "$log" >&2 || true
    touch "$build/.complete"
    ln -s "$(basename "$build")" "$venv-link-$$"
    "$base_python" -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$venv-link-$$" "$venv"
    trap - EXIT
fi

# Point the environment's `image-learner` command at this checkout (cheap; needed when several
# clones share one environment). Compat mode puts the checkout itself on sys.path, so modules added
# later need no reinstall.
if ! (cd / && "$venv/bin/python" - "$here" <<'PY' >/dev/null 2>&1
import os, sys, image_learner_cli
sys.exit(0 if os.path.dirname(os.path.abspath(image_learner_cli.__file__)) == sys.argv[1] else 1)
PY
); then
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
        --config-settings editable_mode=compat -e "$here" >/dev/null 2>&1 \
        || { echo "error: installing image-learner into $venv failed" >&2; exit 1; }
fi
echo "$venv/bin/python"
