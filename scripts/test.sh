#!/usr/bin/env bash
# The whole test run (what CI runs, see .ci/run):
#   1. scripts/setup.sh: dependencies and the build in $HERD_BUILD_DIR (default: build);
#   2. tests/run-tests.sh on it: unit suite + integration suite against herdd;
#   3. a subset of the integration suite on the same build with herdd under valgrind's
#      memcheck (any memory error or definite leak fails the test), unless HERD_VALGRIND=0;
#   4. the same suite on a second build with AddressSanitizer and UBSan
#      ($HERD_SANITIZE_BUILD_DIR, default: build-sanitize), unless HERD_SANITIZE=0.
# Under CI (CI=true) a skipped test counts as a failure: everything must run.
# The last line is the sum over all runs: "N passed, N failed" (", N skipped" if any).
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

# Integration tests that together run 99 % of the herdd lines the whole suite runs (gcov,
# see docs/testing.md): records and Hub queries, the task scheduler, the classic mux/lb
# example over tcp and ipc, bad input, load balancing, broadcast, engine death noticed by the
# heartbeat, --reuse, a scheme choice and a configuration error. About 3 minutes under
# memcheck on 2 CPUs.
valgrind_tests=(
    tests/integration/test_queries.py
    tests/integration/test_dependencies.py
    tests/integration/test_classic.py
    tests/integration/test_bad_input.py
    tests/integration/test_lbview.py
    tests/integration/test_broadcast_view.py
    tests/integration/test_engine_death.py::test_engine_and_nanny_killed_is_unregistered_by_heartbeat
    tests/integration/test_lifecycle.py::test_reuse_brings_back_same_ports_and_key_and_keeps_files
    tests/integration/test_schemes.py::test_weighted_is_random_among_idle_engines_and_avoids_busy_ones
    tests/integration/test_schemes.py::test_an_unknown_scheme_stops_herdd
)
if [ "${HERD_VALGRIND:-1}" = 1 ]; then
    echo "=== integration tests on $builddir with herdd under valgrind"
    if command -v valgrind >/dev/null; then
        # valgrind exits 99 on a memory error or a definite leak; the harness asserts that
        # herdd exits 0 and shows the end of its log (the valgrind report) on a failure.
        HERDD_WRAPPER=${HERD_VALGRIND_WRAPPER:-valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --track-origins=yes} \
        HERD_SUITES=integration HERD_INTEGRATION_TESTS="${valgrind_tests[*]}" \
        HERD_INTEGRATION_TIME_LIMIT=${HERD_VALGRIND_TIME_LIMIT:-600} \
            run_suite "$builddir" || status=1
    else
        echo "valgrind is not installed (scripts/setup.sh installs it)" >&2
        echo "0 passed, 1 failed" >> "$summaries"
        status=1
    fi
fi

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
