#!/usr/bin/env bash
# The whole test run (what CI runs, see .ci/run):
#   1. scripts/setup.sh: dependencies and the build in $HERD_BUILD_DIR (default: build);
#   2. tests/run-tests.sh on it: unit suite + integration suite against herdd;
#   3. the same suite on a second build with AddressSanitizer and UBSan
#      ($HERD_SANITIZE_BUILD_DIR, default: build-sanitize), unless HERD_SANITIZE=0.
# Under CI (CI=true) a skipped test counts as a failure: everything must run.
# The last line is the sum over both runs: "N passed, N failed" (", N skipped" if any).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
builddir=${HERD_BUILD_DIR:-build}
sanitize_builddir=${HERD_SANITIZE_BUILD_DIR:-build-sanitize}
if [ "${CI:-}" = true ]; then
    export HERD_FAIL_ON_SKIP=${HERD_FAIL_ON_SKIP:-1}
fi

scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

summaries=$(mktemp -t herd-summaries.XXXXXX)
trap 'rm -f "$summaries"' EXIT
status=0

# Runs tests/run-tests.sh on a build dir and keeps its summary line.
run_suite() {
    local out
    out=$(mktemp -t herd-run.XXXXXX)
    tests/run-tests.sh "$@" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(tail -n 1 "$out")
    if [[ $last =~ ^[0-9]+\ passed,\ [0-9]+\ failed(,\ [0-9]+\ skipped)?$ ]]; then
        echo "$last" >> "$summaries"
    else
        echo "0 passed, 1 failed" >> "$summaries"   # the runner itself broke
    fi
    rm -f "$out"
    return "$rc"
}

echo "=== tests on $builddir"
run_suite "$builddir" || status=1

if [ "${HERD_SANITIZE:-1}" = 1 ]; then
    echo "=== tests on $sanitize_builddir (AddressSanitizer + UndefinedBehaviorSanitizer)"
    if HERD_BUILD_DIR=$sanitize_builddir HERD_MESON_OPTIONS="-Db_sanitize=address,undefined" \
            scripts/setup.sh; then
        # Any sanitizer report makes herdd (and the unit tests) exit non-zero; the
        # integration harness asserts that herdd exits 0.
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=86} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:exitcode=87} \
            run_suite "$sanitize_builddir" || status=1
    else
        echo "0 passed, 1 failed" >> "$summaries"
        status=1
    fi
fi

# One line for everything: sum the "N passed, N failed[, N skipped]" lines.
awk '
    { for (i = 1; i < NF; i++) { n = $i + 0; w = $(i + 1); sub(/,$/, "", w); total[w] += n } }
    END {
        line = sprintf("%d passed, %d failed", total["passed"], total["failed"])
        if (total["skipped"] > 0) line = line sprintf(", %d skipped", total["skipped"])
        print line
    }' "$summaries"
exit "$status"
