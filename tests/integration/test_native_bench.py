"""`herd bench` in a tiny configuration, so it cannot rot: native echo engines and
native clients against the configured controller, the bare relay baseline, and the
back-to-back comparison with the Python controller. Functional checks only (every
request answered, every field reported), never timing thresholds."""

import json
import os
import sys

import pytest

import herdtest
from native_helpers import herd_path, run_herd

TINY = ["--engines", "2", "--tasks", "200", "--latency-tasks", "30", "--window", "32",
        "--phase-timeout", "60", "--startup-timeout", "30", "--json"]
CHANNELS = {("mux", None), ("lb", "leastload"), ("broadcast", None)}


def python_controller_cmd():
    return f"{sys.executable} -m ipyparallel.controller"


def controller_args():
    """The controller this suite runs against, as bench arguments."""
    if herdtest.controller_kind() == "python":
        return ["--controller-cmd", python_controller_cmd()]
    return ["--controller-cmd", str(herdtest.herdd_path())]


def bench(*args, timeout=300):
    result = run_herd(["bench", *TINY, *args], timeout=timeout)
    assert result.returncode == 0, f"herd bench failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def check_run(run, engines=2, tasks=200):
    assert run["error"] is None
    assert {(c["channel"], c["scheme"]) for c in run["channels"]} == CHANNELS
    for channel in run["channels"]:
        # A task is one engine execution: a broadcast request counts once per engine.
        requests = tasks // engines if channel["channel"] == "broadcast" else tasks
        assert channel["requests"] == requests
        assert channel["tasks"] == tasks, channel
        assert channel["errors"] == 0 and not channel["timed_out"], channel
        assert channel["tasks_per_s"] > 0
        latency = channel["latency_ms"]
        assert latency["samples"] == 30
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert channel["controller_cpu_s"] >= 0
        assert channel["engines_cpu_s"] >= 0 and channel["clients_cpu_s"] >= 0  # 10 ms clock ticks
        assert channel["controller_peak_rss_kb"] > 0


def test_bench_tiny_run_against_the_controller():
    report = bench(*controller_args())
    assert report["config"]["engines"] == 2
    assert len(report["runs"]) == 1
    check_run(report["runs"][0])


def test_bench_raw_relay_baseline():
    report = bench(*controller_args(), "--raw")
    assert [run["controller"] for run in report["runs"]] == ["custom", "raw"]
    for run in report["runs"]:
        check_run(run)
    assert len(report["ratios"]) == 1


@pytest.mark.parametrize("hwm", [1, 3])
def test_bench_relay_with_an_hwm_answers_every_request(hwm):
    """`herd relay --hwm N` holds task requests back while every engine has N in flight
    (the bare baseline for a controller's hwm): with a window of 32 over 2 engines most
    requests wait, and every one must still be answered once."""
    report = bench("--controller-cmd", f"{herd_path()} relay --hwm {hwm}", "--channels", "lb")
    (run,) = report["runs"]
    (channel,) = run["channels"]
    assert run["error"] is None
    assert channel["tasks"] == 200 and channel["errors"] == 0 and not channel["timed_out"], channel
    assert channel["latency_ms"]["samples"] == 30


def test_bench_hwm_reaches_every_controller():
    """`--hwm N` is handed to the controller under test and to the relay alike (a flag either
    would refuse makes its start fail), and the report says which hwm was used."""
    report = bench(*controller_args(), "--raw", "--hwm", "2", "--channels", "lb")
    assert report["config"]["hwm"] == 2
    assert [run["controller"] for run in report["runs"]] == ["custom", "raw"]
    for run in report["runs"]:
        assert run["error"] is None
        (channel,) = run["channels"]
        assert channel["tasks"] == 200 and channel["errors"] == 0 and not channel["timed_out"], channel


def test_bench_compare_runs_herdd_and_python_back_to_back():
    if not os.access(herdtest.herdd_path(), os.X_OK):
        pytest.skip("herdd is not built")
    report = bench("--compare", "--python", sys.executable, "--controller-cmd",
                   str(herdtest.herdd_path()), "--channels", "mux,lb", timeout=400)
    assert [run["controller"] for run in report["runs"]] == ["custom", "python"]
    for run in report["runs"]:
        assert run["error"] is None
        assert all(c["errors"] == 0 and c["tasks"] == 200 for c in run["channels"])
    ratios = report["ratios"][0]
    assert {c["channel"] for c in ratios["channels"]} == {"mux", "lb"}
    assert all(c["throughput"] > 0 for c in ratios["channels"])


def test_bench_text_report_names_every_channel():
    args = [a for a in TINY if a != "--json"]
    result = run_herd(["bench", *args, *controller_args(), "--schemes", "leastload,lru"],
                      timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("mux", "lb[leastload]", "lb[lru]", "broadcast", "tasks/s", "p99 ms"):
        assert name in result.stdout


def test_bench_rejects_bad_options():
    result = run_herd(["bench", "--channels", "mux,nope"], timeout=30)
    assert result.returncode == 2
    assert "channels" in result.stderr
