#!/usr/bin/env bash
# Demo: build herd (scripts/setup.sh), start herdd and 4 unmodified ipyparallel engines
# in a temporary profile with `herd cluster start`, run the classic example through an
# unmodified ipyparallel.Client, print the result, then `herd cluster stop` (by PID).
# Environment: HERD_BUILD_DIR (default: build), HERD_PYTHON (default: Debian's python3).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
builddir=${HERD_BUILD_DIR:-build}
python=${HERD_PYTHON:-/usr/bin/python3}
herd=$builddir/tools/herd
engines=4

scripts/setup.sh

work=$(mktemp -d -t herd-demo.XXXXXX)
profile=$work/profile

on_exit() {
    local status=$?
    # Whatever `herd cluster start` recorded is stopped, also after a failure.
    if [ -e "$profile/security/herd-cluster.json" ]; then
        "$herd" cluster stop --profile-dir "$profile" || status=1
    fi
    if [ "$status" -ne 0 ]; then
        echo "demo failed; logs in $profile/log:" >&2
        tail -n 20 "$profile"/log/*.log >&2 || true
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap on_exit EXIT

"$herd" cluster start -n "$engines" --profile-dir "$profile" --python "$python" --ping 500 --timeout 120

"$python" - "$profile" "$engines" <<'EOF'
import sys

import ipyparallel as ipp

profile_dir, n = sys.argv[1], int(sys.argv[2])
rc = ipp.Client(profile_dir=profile_dir, timeout=30)
rc.wait_for_engines(n, timeout=60)   # already there: herd cluster start waited for them
print("engines:", rc.ids)

rc[:].push(dict(a=5, b=10), block=True)
rc[::2].execute("c=a+b", block=True)
rc[1::2].execute("c=a-b", block=True)
print("rc[:]['c'] =", rc[:]["c"])
rc.close()
EOF
