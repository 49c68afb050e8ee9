#!/usr/bin/env bash
# Prepares a Debian 12 machine and builds herd:
#   - installs the build and test dependencies that are missing (apt-get, needs root);
#   - configures the build directory (-Dwerror=true) if it is not configured yet;
#   - builds it.
# Idempotent: a second run installs nothing, reconfigures nothing and prints nothing.
# Environment: HERD_BUILD_DIR (default: build), HERD_MESON_OPTIONS (extra `meson setup`
# options, used only when the directory is first configured).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
builddir=${HERD_BUILD_DIR:-build}

packages=(
    # build
    meson ninja-build pkg-config gcc libc6-dev
    libzmq3-dev libglib2.0-dev libjson-glib-dev libsodium-dev libssl-dev libssh-dev
    # integration tests: real ipyparallel peers, driven by pytest
    python3-ipyparallel python3-zmq python3-psutil python3-pytest python3-pytest-timeout
    # memory checking (HERDD_WRAPPER=valgrind ...)
    valgrind
    # `herd cluster` launcher tests: Open MPI's mpiexec, an sshd and a Slurm of their own
    openmpi-bin openssh-server slurm-wlm
)

missing_packages() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

# Run a step quietly; show its output only if it fails.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "setup: failed: $*" >&2
        return 1
    fi
}

mapfile -t missing < <(missing_packages)
if (( ${#missing[@]} )); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing packages (run as root to install them): ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update -q
    quietly apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -f "$builddir/build.ninja" ]; then
    # shellcheck disable=SC2086  # HERD_MESON_OPTIONS is a list of options
    quietly meson setup "$builddir" -Dwerror=true ${HERD_MESON_OPTIONS:-}
fi
# ninja says "no work to do" when up to date: keep that quiet too.
quietly ninja -C "$builddir"
