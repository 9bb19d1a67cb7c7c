#!/usr/bin/env bash
# Builds (when missing or out of date) the tools' container image from ./Dockerfile and prints its
# name: the <container> that macros.xml declares. The first run on a machine also installs podman
# with Debian's `docker` wrapper (Galaxy calls `docker`) and, where no image registry can be reached,
# makes the recipe's Debian base image locally with debootstrap. Progress goes to stderr; stdout is
# only the image name. The image is labelled with a hash of the recipe, .dockerignore and every file
# of the build context (pyproject.toml's dependency list included); podman's layer cache keeps the
# dependency layer, the slow part, until the recipe or the dependency list changes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
cache=${IMAGE_LEARNER_ENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-learner}
mkdir -p "$cache"
say() { echo "image-learner: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

# The image name: macros.xml's docker <container>, with the tool version filled in.
version=$(sed -n 's:.*<token name="@TOOL_VERSION@">\([^<]*\)</token>.*:\1:p' macros.xml | head -1)
image=$(sed -n 's:.*<container type="docker">\([^<]*\)</container>.*:\1:p' macros.xml | head -1)
image=${image//@TOOL_VERSION@/$version}
[ -n "$version" ] && [ -n "$image" ] || die "macros.xml declares no docker <container> with @TOOL_VERSION@"

# One build at a time on a machine (two test runs would otherwise build the same image twice).
exec 9>"$cache/image.lock"
flock -w 3600 9 || die "another build of $image held $cache/image.lock for an hour"

# 1. podman, as `docker` too (Debian's podman-docker), and debootstrap for the base image.
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman buildah runc fuse-overlayfs)
[ -x /usr/bin/docker ] || missing+=(podman-docker)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "podman is missing and apt-get is not available to install ${missing[*]}"
    say "installing ${missing[*]} (first run only; log: $cache/apt.log)"
    { timeout 600 $sudo_cmd apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive timeout 900 $sudo_cmd apt-get install -y -qq "${missing[@]}"; } \
        >"$cache/apt.log" 2>&1 || { tail -20 "$cache/apt.log" >&2; die "installing ${missing[*]} failed"; }
fi
# Settings that podman needs on machines like ours: open-file limits within the host's hard limit,
# runc (crun fails on these cgroups), cgroupfs and a file event log (no systemd). An existing
# configuration is left alone.
if [ ! -e /etc/containers/containers.conf ]; then
    $sudo_cmd mkdir -p /etc/containers
    $sudo_cmd tee /etc/containers/containers.conf >/dev/null <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
fi
[ -e /etc/containers/nodocker ] || $sudo_cmd touch /etc/containers/nodocker  # podman-docker's notice
# Galaxy's jobs call /usr/bin/docker: it must be podman's wrapper, which sees the image built here.
/usr/bin/docker --version 2>/dev/null | grep -qi podman \
    || die "/usr/bin/docker is not podman's wrapper (Debian's podman-docker): the Galaxy tests would not see the image"

# 2. The recipe's base image: pulled where a registry answers, otherwise made from Debian's
# packages (debootstrap, minimal variant) and imported under the same name, so the recipe stays standard.
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
if ! podman image exists "$base"; then
    say "getting the base image $base (first run only)"
    if ! timeout 120 podman pull -q "$base" >/dev/null 2>&1; then
        suite=${base##*:}
        suite=${suite%-slim}
        mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        say "no registry answered: building $base from $mirror ($suite, debootstrap)"
        rootfs=$(mktemp -d)
        trap 'rm -rf "$rootfs"' EXIT
        timeout 1200 debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap $suite failed (log: $cache/debootstrap.log)"; }
        tar -C "$rootfs" -c . | podman import -q - "$base" >/dev/null
        rm -rf "$rootfs"
        trap - EXIT
    fi
fi

# 3. The image, rebuilt only when the recipe or a file of its build context changed.
context_files() {  # the checkout's files less .dockerignore's entries (plain names and globs)
    local f p skip
    mapfile -t patterns < <(grep -v -e '^#' -e '^[[:space:]]*$' .dockerignore)
    while IFS= read -r f; do
        f=${f#./}
        skip=0
        for p in "${patterns[@]}"; do
            # shellcheck disable=SC2053  # the pattern is a glob on purpose
            if [[ $f == $p || $f == $p/* || $f == */$p || $f == */$p/* ]]; then skip=1; break; fi
        done
        [ "$skip" -eq 1 ] || echo "$f"
    done < <(find . -path ./.git -prune -o -type f -print | LC_ALL=C sort)
}
mapfile -t files < <(context_files)
key=$( (sha256sum Dockerfile .dockerignore; sha256sum "${files[@]}") | sha256sum | cut -c1-16)
label=org.image-learner.build-hash
current=$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$image" 2>/dev/null || true)
if [ "$current" != "$key" ]; then
    say "building $image from Dockerfile (first run, or the recipe, dependencies or code changed: 4 to 16 minutes from nothing on 2 cores, seconds when only the code changed)"
    secret=()
    # pip in the build trusts this machine's CA bundle (a TLS-intercepting proxy); it is not kept in the image.
    [ -s /etc/ssl/certs/ca-certificates.crt ] && secret=(--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)
    old=$(podman image inspect --format '{{ .Id }}' "$image" 2>/dev/null || true)
    started=$(date +%s)
    if ! timeout 3600 podman build "${secret[@]}" --label "$label=$key" -t "$image" -f Dockerfile . \
            >"$cache/image-build.log" 2>&1; then
        tail -40 "$cache/image-build.log" >&2
        die "building $image failed (log: $cache/image-build.log)"
    fi
    say "built $image in $(( $(date +%s) - started )) s"
    # The image it replaces: its layers that the new one does not share (the dependency layer stays).
    if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{ .Id }}' "$image")" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
fi
echo "$image"
