#!/usr/bin/env bash
# The Galaxy tool in a real Galaxy, offline: planemo lint (warnings fail), shed_lint, then every tool
# test with planemo test against Galaxy 26.1 installed from PyPI (../shared/galaxy-testing/galaxy_ci.sh).
# The tool's requirements resolve to the project's environment through a galaxy_packages resolver.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ci_script=${GALAXY_CI_SCRIPT:-$here/../shared/galaxy-testing/galaxy_ci.sh}
[ -f "$ci_script" ] || { echo "error: $ci_script not found (shared/ must sit beside the checkout)" >&2; exit 1; }
py=$(bash "$here/scripts/ensure_env.sh")
venv_bin=$(dirname "$py")
prefix=${GXCI_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/galaxy-tool-ci}
tools=(image_learner.xml image_learner_predict.xml)

# Galaxy and planemo (installed once, cached in $prefix; galaxy_ci.sh without arguments only installs)
bash "$ci_script" >/dev/null 2>&1 || bash "$ci_script"
planemo=$prefix/planemo-venv/bin/planemo

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

# Every <requirement name version> -> an env.sh that puts the project's environment first on PATH.
mkdir -p "$work/deps"
"$py" - "$here/macros.xml" "$work/deps" "$venv_bin" <<'PY'
import os, sys, xml.etree.ElementTree as ET
macros, deps, venv_bin = sys.argv[1:]
for req in ET.parse(macros).getroot().iter("requirement"):
    folder = os.path.join(deps, req.text.strip(), req.get("version"))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "env.sh"), "w") as handle:
        handle.write(f'export PATH="{venv_bin}:$PATH"\n')
PY
cat > "$work/deps/resolvers.xml" <<XML
<dependency_resolvers>
  <galaxy_packages base_path="$work/deps" />
</dependency_resolvers>
XML

echo "== planemo test (real Galaxy)"
started=$(date +%s)
status=0
GXCI_PREFIX=$prefix bash "$ci_script" "${tools[@]}" \
    --dependency_resolvers_config_file "$work/deps/resolvers.xml" --no_conda_auto_install \
    --test_output_json "$work/tool_test_output.json" --test_output "$work/tool_test_output.html" \
    --test_output_xunit "$work/xunit.xml" >"$work/planemo.log" 2>&1 || status=$?
# Galaxy's server log is long: show its end only when something went wrong.
[ "$status" -eq 0 ] || grep -vE "uvicorn.access|display_applications" "$work/planemo.log" | tail -60
"$py" - "$work/tool_test_output.json" "$(( $(date +%s) - started ))" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
tests = report.get("tests", [])
passed = sum(1 for t in tests if t.get("data", {}).get("status") == "success")
failed = len(tests) - passed
for t in tests:
    if t.get("data", {}).get("status") != "success":
        job = t.get("data", {}).get("job") or {}
        print(f"FAILED {t.get('id')}: {t.get('data', {}).get('output_problems')}")
        print((job.get("stderr") or "")[-2000:])
print(f"planemo test took {sys.argv[2]} s for {len(tests)} tool tests")
print(f"galaxy: {passed} passed, {failed} failed")
sys.exit(1 if failed or not tests else 0)
PY
exit "$status"
