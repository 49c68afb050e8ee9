#!/usr/bin/env bash
# Runs every test against one build directory:
#   1. the unit suite: `meson test --suite unit` (GTest in TAP mode, one count per subtest);
#   2. the integration suite: pytest on tests/integration, with real ipyparallel peers
#      against <builddir>/daemon/herdd (see docs/testing.md for the environment variables).
# Usage: tests/run-tests.sh [builddir] [extra pytest arguments...]
# HERD_SUITES picks the suites ("unit integration" by default); HERD_INTEGRATION_TESTS the
# pytest paths (default: tests/integration), e.g. a few files for the valgrind pass.
# The last line printed is exactly "N passed, N failed" (", N skipped" only if any were
# skipped), summed over both suites; the exit status is non-zero on any failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
requested=${1:-$repo/build}
shift $(( $# > 0 ? 1 : 0 ))
builddir=$(cd "$requested" 2>/dev/null && pwd) || { echo "run-tests: no build directory $requested" >&2; exit 2; }

# Debian's interpreter: it has zmq, ipyparallel and pytest (another python3 may come first on PATH).
python=${HERD_PYTHON:-/usr/bin/python3}
unit_limit=${HERD_UNIT_TIME_LIMIT:-600}           # seconds for the whole unit suite
integration_limit=${HERD_INTEGRATION_TIME_LIMIT:-1500}   # seconds for the whole pytest run
suites=" ${HERD_SUITES:-unit integration} "
read -r -a integration_tests <<< "${HERD_INTEGRATION_TESTS:-tests/integration}"
for suite in $suites; do
    [[ $suite == unit || $suite == integration ]] || {
        echo "run-tests: HERD_SUITES: unknown suite $suite (unit, integration)" >&2; echo "0 passed, 1 failed"; exit 2; }
done

results=$(mktemp -d -t herd-results.XXXXXX)
trap 'rm -rf "$results"' EXIT

unit_status=0
if [[ $suites == *" unit "* ]]; then
    echo "== unit tests (meson test -C $builddir --suite unit)"
    rm -f "$builddir/meson-logs/testlog.junit.xml"
    timeout --kill-after=30 "$unit_limit" meson test -C "$builddir" --suite unit --print-errorlogs
    unit_status=$?
    [ -f "$builddir/meson-logs/testlog.junit.xml" ] && cp "$builddir/meson-logs/testlog.junit.xml" "$results/unit.xml"
fi

integration_status=0
if [[ $suites == *" integration "* ]]; then
    echo "== integration tests (pytest ${integration_tests[*]}, herdd from $builddir${HERDD_WRAPPER:+ under $HERDD_WRAPPER})"
    (
        cd "$repo" &&
        HERD_BUILD_DIR=$builddir timeout --kill-after=30 "$integration_limit" \
            "$python" -m pytest "${integration_tests[@]}" --durations=10 --junitxml="$results/integration.xml" "$@"
    )
    integration_status=$?
fi

# Count test cases in both JUnit files: meson writes one per TAP subtest, pytest one per
# test. A suite that failed without a failing case (crash, time limit, no report) counts
# as one failure so that the summary can never say "0 failed" for a broken run.
"$python" - "$results" "$unit_status" "$integration_status" <<'EOF'
import os
import sys
import xml.etree.ElementTree as ET

results, unit_status, integration_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fail_on_skip = os.environ.get("HERD_FAIL_ON_SKIP") == "1"


def count(path):
    passed = failed = skipped = 0
    if not os.path.exists(path):
        return None
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


total = [0, 0, 0]
# pytest exits 5 when it collected no test at all: that is a failure here too.
for name, status in (("unit", unit_status), ("integration", integration_status)):
    counts = count(os.path.join(results, f"{name}.xml"))
    if counts is None:
        counts = (0, 0, 0)
    passed, failed, skipped = counts
    if status != 0 and failed == 0:
        print(f"run-tests: the {name} suite failed (exit status {status}) without a failing test case",
              file=sys.stderr)
        failed = 1
    if fail_on_skip and skipped:
        print(f"run-tests: {skipped} {name} test(s) skipped and HERD_FAIL_ON_SKIP=1", file=sys.stderr)
    total = [total[0] + passed, total[1] + failed, total[2] + skipped]

passed, failed, skipped = total
if fail_on_skip:
    failed, skipped = failed + skipped, 0
line = f"{passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)
sys.exit(1 if failed else 0)
EOF
