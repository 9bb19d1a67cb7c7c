#!/usr/bin/env bash
# Debian's Chromium for the report-rendering test (no browser download from anywhere else).
# Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: /usr/bin/chromium is missing and apt-get is not available to install it" >&2
    exit 1
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
echo "image-learner: installing Debian's chromium (first run only)" >&2
$sudo_cmd apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >&2
