#!/usr/bin/env bash
# Runs ipyparallel's own test suite (the copy Debian installs with python3-ipyparallel)
# against herdd instead of ipcontroller, and prints a pass/fail summary.
#
# Usage: scripts/upstream-tests.sh [builddir] [module ...] [-- pytest arguments ...]
#   builddir  herd build directory holding daemon/herdd (default: $HERD_BUILD_DIR or build)
#   module    upstream test modules to run, e.g. test_lbview (default: the list below)
#
# How: the upstream package ipyparallel/tests is copied to a temporary folder, and a small
# pytest plugin (written next to it) points ipyparallel's launcher at herdd before any
# test starts: upstream's setup() starts `ipcontroller_cmd_argv + [--profile=iptest,
# --log-level=10, --ping=250, --dictdb]`, and herdd accepts exactly those flags. The copy
# is registered as `ipyparallel.tests` too, because clienttest.py imports it by that name
# (otherwise it would start engines through the installed copy's bookkeeping, which the
# copy's teardown never stops). Engines and clients are the unmodified ipyparallel ones.
#
# Each module runs in its own pytest, bounded: each test HERD_UPSTREAM_TEST_TIMEOUT seconds
# (default 60, pytest-timeout), each module HERD_UPSTREAM_TIME_LIMIT seconds (default 600).
# Afterwards every process that still carries this run's token in its environment (herdd,
# engines) is killed by PID. Everything runs in a private IPYTHONDIR inside the temporary
# folder, which is removed at the end (HERD_UPSTREAM_KEEP=1 keeps it and the JUnit reports).
# HERD_UPSTREAM_REFERENCE=1 runs the same thing against ipyparallel's own controller, to
# tell herd's failures from upstream's own.
#
# The exit status is 0 when every test passed (or was skipped/xfailed by upstream itself),
# 1 otherwise. Not part of tests/run-tests.sh: it takes several minutes (see
# docs/compatibility.md for the results and the time).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${HERD_PYTHON:-/usr/bin/python3}
per_test=${HERD_UPSTREAM_TEST_TIMEOUT:-60}
limit=${HERD_UPSTREAM_TIME_LIMIT:-600}

builddir=${HERD_BUILD_DIR:-build}
if [ $# -gt 0 ] && [ "$1" != "--" ] && [ -d "$1" ]; then
    builddir=$1
    shift
fi
case $builddir in /*) ;; *) builddir=$repo/$builddir ;; esac
herdd=${HERDD:-$builddir/daemon/herdd}
[ -x "$herdd" ] || { echo "upstream-tests: no herdd at $herdd (build first)" >&2; exit 2; }

modules=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    modules+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
if [ ${#modules[@]} -eq 0 ]; then
    # The modules that exercise a controller. Left out (see docs/compatibility.md):
    # test_cluster/test_apps/test_launcher/test_slurm/test_ssh/test_mpi (launchers and
    # ipcluster), test_mongodb (a MongoDB server), test_joblib (joblib is not installed),
    # test_async (pytest-asyncio), and those that never talk to a controller: test_db
    # (7.1's own DictDB/SQLite classes, in-process), test_canning, test_serialize, test_util.
    modules=(test_lbview test_dependency test_view_broadcast test_asyncresult test_client
             test_view test_executor test_remotefunction test_magics)
fi

upstream=$("$python" -c 'import os, ipyparallel.tests as t; print(os.path.dirname(t.__file__))') ||
    { echo "upstream-tests: $python has no ipyparallel.tests" >&2; exit 2; }

work=$(mktemp -d -t herd-upstream.XXXXXX)
cleanup() {
    if [ "${HERD_UPSTREAM_KEEP:-0}" = 1 ]; then
        echo "upstream-tests: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# The copy is the package "upstream_tests" (its relative imports keep working).
cp -r "$upstream" "$work/upstream_tests"
rm -rf "$work/upstream_tests/__pycache__"
mkdir -p "$work/ipython"

cat > "$work/herd_upstream_plugin.py" <<'EOF'
"""Loaded with -p before collection: run upstream's controller command as herdd."""
import os
import sys

import ipyparallel.cluster.launcher as launcher

# The very list object the tests imported (or will import) by name: patch it in place.
# (HERD_UPSTREAM_REFERENCE=1 leaves ipcontroller in place, for comparison.)
if os.environ.get("HERD_UPSTREAM_REFERENCE") != "1":
    launcher.ipcontroller_cmd_argv[:] = [os.environ["HERD_UPSTREAM_HERDD"]]

import upstream_tests  # noqa: E402  (after the patch, which it reads at setup())

sys.modules["ipyparallel.tests"] = upstream_tests
EOF

cat > "$work/pytest.ini" <<EOF
[pytest]
timeout = $per_test
timeout_method = signal
addopts = -p no:cacheprovider
filterwarnings =
    ignore::DeprecationWarning
    ignore::pytest.PytestUnknownMarkWarning
EOF

# Kills what a run left behind: processes carrying this run's token in their environment
# (herdd and engines inherit it from pytest), by PID. A module that hangs or crashes
# skips upstream's own teardown.
reap_leftovers() {
    "$python" - "$work" <<'PYEOF'
import sys
import psutil
token = sys.argv[1]
mine = []
for proc in psutil.process_iter(["pid", "cmdline"]):
    try:
        if proc.environ().get("HERD_UPSTREAM_RUN") == token:
            mine.append(proc)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        continue
# An engine's nanny lingers up to 3 s to tell a controller that may be gone already
# that its engine exited: give everything that long to finish by itself.
_, mine = psutil.wait_procs(mine, timeout=5)
for proc in mine:
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
psutil.wait_procs(mine, timeout=10)
if mine:
    names = ", ".join(sorted({" ".join(p.info.get("cmdline") or [])[:60] for p in mine}))
    print(f"upstream-tests: killed {len(mine)} leftover process(es): {names}")
PYEOF
}

if [ "${HERD_UPSTREAM_REFERENCE:-0}" = 1 ]; then
    echo "== ipyparallel's own tests ($upstream) against the Python controller (reference run)"
else
    echo "== ipyparallel's own tests ($upstream) against $herdd"
fi
start=$(date +%s)
status=0
# One pytest per module: a module that hangs or crashes the interpreter (zmq context
# teardown under a timeout) cannot take the others down with it.
for m in "${modules[@]}"; do
    m=${m%.py}
    echo "-- $m"
    (
        cd "$work" &&
        IPYTHONDIR=$work/ipython HERD_UPSTREAM_HERDD=$herdd HERD_UPSTREAM_RUN=$work \
        PYTHONPATH=$work${PYTHONPATH:+:$PYTHONPATH} PYDEVD_DISABLE_FILE_VALIDATION=1 \
            timeout --kill-after=30 "$limit" "$python" -m pytest -p herd_upstream_plugin \
            --junitxml="$work/results-$m.xml" -q -rfEX "upstream_tests/$m.py" "$@"
    )
    rc=$?
    # pytest: 0 all passed, 1 some failed, 5 nothing collected; anything else broke.
    if [ $rc -ne 0 ]; then
        status=1
        [ $rc -ne 1 ] && echo "upstream-tests: pytest for $m exited with status $rc"
    fi
    reap_leftovers
done
elapsed=$(( $(date +%s) - start ))

# Per-module table from the JUnit report: passed / failed / errors / skipped / xfailed.
"$python" - "$work" "$elapsed" "${modules[@]}" <<'EOF'
import collections
import os
import sys
import xml.etree.ElementTree as ET

work, elapsed, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
counts = collections.defaultdict(collections.Counter)
cases = []
for m in modules:
    m = m[:-3] if m.endswith(".py") else m
    path = os.path.join(work, f"results-{m}.xml")
    if not os.path.exists(path):
        counts[m]["error"] += 1  # no report: the run broke (crash, time limit)
        print(f"upstream-tests: {m}: no report (pytest did not finish)")
        continue
    cases += list(ET.parse(path).getroot().iter("testcase"))
for case in cases:
    module = case.get("classname", "").split(".")[1] if "." in case.get("classname", "") else "?"
    tags = {child.tag for child in case}
    skipped = case.find("skipped")
    if tags & {"failure"}:
        outcome = "failed"
    elif "error" in tags:
        outcome = "error"
    elif skipped is not None:
        outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
    else:
        outcome = "passed"
    counts[module][outcome] += 1
columns = ["passed", "failed", "error", "skipped", "xfailed"]
print(f"{'module':24}" + "".join(f"{c:>9}" for c in columns))
total = collections.Counter()
for module in sorted(counts):
    total.update(counts[module])
    print(f"{module:24}" + "".join(f"{counts[module][c]:>9}" for c in columns))
print(f"{'total':24}" + "".join(f"{total[c]:>9}" for c in columns))
print(f"upstream: {total['passed']} passed, {total['failed'] + total['error']} failed, "
      f"{total['skipped'] + total['xfailed']} skipped/xfailed in {elapsed} s")
EOF
exit $status
