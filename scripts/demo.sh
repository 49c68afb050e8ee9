#!/usr/bin/env bash
# Demo: build herd (scripts/setup.sh), start herdd and 4 unmodified ipyparallel engines
# in a temporary profile, run the classic example through an unmodified
# ipyparallel.Client, print the result, then stop everything by PID.
# Environment: HERD_BUILD_DIR (default: build), HERD_PYTHON (default: Debian's python3).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
builddir=${HERD_BUILD_DIR:-build}
python=${HERD_PYTHON:-/usr/bin/python3}
engines=4

scripts/setup.sh

work=$(mktemp -d -t herd-demo.XXXXXX)
profile=$work/profile
herdd_pid=
engine_pids=()

herdd_status=

stop_all() {
    local pid
    for pid in "${engine_pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true      # each engine leads its own group
    done
    for pid in "${engine_pids[@]}"; do
        wait_for_exit "$pid" 10 || kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    engine_pids=()
    if [ -n "$herdd_pid" ]; then
        kill -TERM "$herdd_pid" 2>/dev/null || true
        wait_for_exit "$herdd_pid" 10 || kill -KILL "$herdd_pid" 2>/dev/null || true
        herdd_status=0
        wait "$herdd_pid" || herdd_status=$?
        herdd_pid=
    fi
}

# running PID: true while the process exists and is not a zombie (our children stay
# zombies until `wait` reaps them, so `kill -0` is not enough).
running() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# wait_for_exit PID SECONDS: bounded wait for a process to end.
wait_for_exit() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        running "$1" || return 0
        sleep 0.1
    done
    return 1
}

on_exit() {
    local status=$?
    stop_all
    if [ "$status" -ne 0 ]; then
        echo "demo failed; logs in $work:" >&2
        tail -n 20 "$work"/*.log >&2 || true
    else
        rm -rf "$work"
    fi
}
trap on_exit EXIT

echo "starting herdd (profile $profile)"
"$builddir/daemon/herdd" --profile-dir "$profile" --ip 127.0.0.1 --ping 500 >"$work/herdd.log" 2>&1 &
herdd_pid=$!

for ((i = 0; i < 300; i++)); do                     # up to 30 s for both connection files
    [ -s "$profile/security/ipcontroller-client.json" ] &&
        [ -s "$profile/security/ipcontroller-engine.json" ] && break
    running "$herdd_pid" || { echo "herdd exited early" >&2; exit 1; }
    sleep 0.1
done
[ -s "$profile/security/ipcontroller-engine.json" ] || { echo "herdd wrote no connection files" >&2; exit 1; }

echo "starting $engines ipyparallel engines"
for ((i = 0; i < engines; i++)); do
    setsid "$python" -m ipyparallel.engine --profile-dir "$profile" --log-level=30 \
        >"$work/engine-$i.log" 2>&1 &
    engine_pids+=($!)
done

"$python" - "$profile" "$engines" <<'EOF'
import sys

import ipyparallel as ipp

profile_dir, n = sys.argv[1], int(sys.argv[2])
rc = ipp.Client(profile_dir=profile_dir, timeout=30)
rc.wait_for_engines(n, timeout=60)
print("engines:", rc.ids)

rc[:].push(dict(a=5, b=10), block=True)
rc[::2].execute("c=a+b", block=True)
rc[1::2].execute("c=a-b", block=True)
print("rc[:]['c'] =", rc[:]["c"])
rc.close()
EOF

stop_all
echo "herdd stopped (exit status $herdd_status)"
exit "$herdd_status"
