"""An engine killed with SIGKILL leaves the cluster, and work pending on it fails.

Two detection paths exist (spec 5.4): the engine's nanny notices its parent
died and sends unregistration_request at once; if the nanny dies too, only
the heartbeat notices, after max misses (10) + 1 periods."""

import signal
import time

import pytest
from ipyparallel import interactive
from ipyparallel.error import RemoteError

import herdtest

HEARTBEAT_MISSES = 10  # HeartMonitor.max_heartmonitor_misses default, spec 5.3


def heartbeat_window():
    """Seconds within which a silent engine must be declared dead, with slack
    for a loaded 2-core machine."""
    return ((HEARTBEAT_MISSES + 1) * herdtest.heartbeat_ms() / 1000 + 4) * herdtest.time_scale()


@interactive
def started_then_sleep(seconds):
    import time
    print("started", flush=True)
    time.sleep(seconds)


def fastest_heartbeat_detection():
    """No heartbeat monitor can declare an engine dead sooner than this; a
    nanny report must come before it."""
    return HEARTBEAT_MISSES * herdtest.heartbeat_ms() / 1000 * 0.5


def start_long_request(rc, engine_id):
    """A MUX request that is running on the engine (its stdout says so)."""
    ar = rc[engine_id].apply_async(started_then_sleep, 30)
    herdtest.wait_until(lambda: "started" in (ar.stdout or ""), 15, what="the sleep to start")
    assert not ar.ready()
    return ar


def wait_until_gone(rc, engine_id, timeout):
    begin = time.monotonic()
    herdtest.wait_until(lambda: engine_id not in rc.ids, timeout,
                        what=f"engine {engine_id} to leave rc.ids")
    return time.monotonic() - begin


def assert_fails_with_engine_error(ar):
    with pytest.raises(RemoteError) as excinfo:
        ar.get(timeout=15)
    assert excinfo.value.ename == "EngineError"


def test_killed_engine_is_unregistered_through_its_nanny(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client
    victim = cluster.engine_by_id(0)
    nanny = victim.nanny_pid()
    ar = start_long_request(rc, 0)

    victim.kill(signal.SIGKILL)
    elapsed = wait_until_gone(rc, 0, timeout=heartbeat_window())

    # The nanny reports at once; well before the heartbeat could.
    assert elapsed < fastest_heartbeat_detection(), f"took {elapsed:.2f}s: not the nanny path"
    assert rc.ids == [1]
    assert_fails_with_engine_error(ar)
    herdtest.wait_until(lambda: not herdtest.pid_alive(nanny), 10, what="the nanny to exit")
    assert rc[1].apply_sync(sum, [1, 2]) == 3


def test_engine_and_nanny_killed_is_unregistered_by_heartbeat(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client
    victim = cluster.engine_by_id(1)
    nanny = victim.nanny_pid()
    ar = start_long_request(rc, 1)

    # Nanny first, so nobody sends unregistration_request.
    herdtest.kill_pid(nanny)
    victim.kill(signal.SIGKILL)
    elapsed = wait_until_gone(rc, 1, timeout=heartbeat_window())

    assert rc.ids == [0]
    assert_fails_with_engine_error(ar)
    # Nothing but the heartbeat can have noticed, and it cannot be that fast.
    assert elapsed >= fastest_heartbeat_detection(), f"took only {elapsed:.2f}s"
    assert rc[0].apply_sync(sum, [1, 2]) == 3


def test_load_balanced_task_on_dead_engine_fails_with_engine_error(cluster_factory):
    cluster = cluster_factory(engines=1)
    rc = cluster.client
    victim = cluster.engine_by_id(0)
    ar = rc.load_balanced_view().apply_async(started_then_sleep, 30)
    herdtest.wait_until(lambda: "started" in (ar.stdout or ""), 15, what="the task to start")

    victim.kill(signal.SIGKILL)
    wait_until_gone(rc, 0, timeout=heartbeat_window())
    # The scheduler fails in-flight tasks of a dead engine (spec 9: after 5 s).
    with pytest.raises(RemoteError) as excinfo:
        ar.get(timeout=15 * herdtest.time_scale())
    assert excinfo.value.ename == "EngineError"


@pytest.mark.herd_only("7.1 keeps unregistered engines in queue_status (spec Q3)")
def test_queue_status_forgets_dead_engines(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client
    cluster.engine_by_id(0).kill(signal.SIGKILL)
    wait_until_gone(rc, 0, timeout=heartbeat_window())

    status = rc.queue_status()
    status.pop("unassigned")
    assert sorted(status) == rc.ids == [1]
