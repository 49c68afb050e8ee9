"""A real ipyparallel.Client and real engines doing ordinary work through the
controller, over tcp and (herdd only) with every channel on ipc."""

import os

import pytest
from ipyparallel import interactive

import herdtest
from conftest import module_cluster

TRANSPORTS = [
    pytest.param("tcp"),
    pytest.param("ipc", marks=pytest.mark.herd_only("ipyparallel 7.1's own ipc mode is broken (spec Q14)")),
]


@pytest.fixture(scope="module", params=TRANSPORTS)
def two_engines(request, tmp_path_factory):
    """One controller, two engines and a client, shared by this module's tests."""
    yield from module_cluster(tmp_path_factory, engines=2, transport=request.param)


@pytest.fixture
def rc(two_engines):
    return two_engines.client


def test_connection_files_use_the_requested_transport(two_engines):
    transport = two_engines.controller.transport
    for side in ("client", "engine"):
        info = two_engines.controller.connection_info(side)
        assert info["interface"].startswith(f"{transport}://"), info
        assert isinstance(info["registration"], int)


def test_both_engines_registered(rc):
    assert sorted(rc.ids) == [0, 1]


def test_execute_on_all_engines(rc):
    ar = rc[:].execute("answer = 6 * 7", block=False)
    ar.get(timeout=15)
    assert ar.successful()
    assert rc[:]["answer"] == [42, 42]


def test_push_then_pull(rc):
    view = rc[:]
    view.push({"alpha": 1, "beta": "two", "gamma": [3.0]}, block=True)
    assert view.pull(["alpha", "beta", "gamma"], block=True) == [[1, "two", [3.0]]] * 2
    assert rc[1].pull("beta", block=True) == "two"


def test_apply_sync_runs_on_each_engine_process(rc, two_engines):
    view = rc[:]
    assert view.apply_sync(interactive(lambda x, y: x * y), 6, 7) == [42, 42]
    pids = view.apply_sync(os.getpid)
    assert sorted(pids) == sorted(e.pid for e in two_engines.engines)


def test_apply_sync_on_one_engine_returns_a_scalar(rc):
    assert rc[0].apply_sync(sum, [1, 2, 3]) == 6


def test_remote_exception_comes_back(rc):
    from ipyparallel.error import RemoteError
    with pytest.raises(RemoteError) as excinfo:
        rc[0].apply_sync(interactive(lambda: 1 / 0))
    assert excinfo.value.ename == "ZeroDivisionError"


def test_scatter_then_gather(rc):
    view = rc[:]
    view.scatter("part", list(range(10)), block=True)
    assert view.apply_sync(interactive(lambda: len(part))) == [5, 5]  # noqa: F821 (remote name)
    assert view.gather("part", block=True) == list(range(10))


def test_print_on_engine_reaches_client_stdout_via_iopub(rc):
    ar = rc[:].execute("print('hello from', 40 + 2)", block=False)
    ar.get(timeout=15)
    assert ar.wait_for_output(15), "iopub output never completed"
    assert ar.stdout == ["hello from 42\n"] * 2


def test_print_inside_apply_is_captured(rc):
    @interactive
    def shout():
        print("inside apply")
        return "done"

    ar = rc[1].apply_async(shout)
    assert ar.get(timeout=15) == "done"
    assert ar.wait_for_output(15)
    assert ar.stdout == "inside apply\n"


def test_load_balanced_view(rc):
    lview = rc.load_balanced_view()
    assert lview.map_sync(interactive(lambda x: x * x), range(8)) == [x * x for x in range(8)]


def test_queue_status_keys_equal_ids(rc):
    status = rc.queue_status()
    status.pop("unassigned")
    assert sorted(status) == sorted(rc.ids)


def test_queue_status_drains_to_zero_when_idle(rc):
    # The Hub may account for a reply a moment after the client got it (7.1
    # learns of it from a separate process), so wait for it, bounded.
    def idle():
        status = rc.queue_status()
        busy = status.pop("unassigned") + sum(c["queue"] + c["tasks"] for c in status.values())
        return busy == 0

    herdtest.wait_until(idle, 10, what="queue_status to show no pending work")
