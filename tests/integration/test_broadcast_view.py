"""rc.broadcast_view(): one request relayed to many engines by the broadcast
scheduler, plain (one reply per engine) and coalescing (the controller merges
the replies into one)."""

import os
import signal

import pytest
from ipyparallel import interactive
from ipyparallel.error import CompositeError, RemoteError

import herdtest
from conftest import module_cluster

ENGINES = 3


@pytest.fixture(scope="module")
def bcast_cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, engines=ENGINES)


@pytest.fixture
def rc(bcast_cluster):
    return bcast_cluster.client


@pytest.fixture(params=[False, True], ids=["plain", "coalescing"])
def bview(request, rc):
    return rc.broadcast_view(is_coalescing=request.param)


@interactive
def whoami():
    import os
    return os.getpid()


def engine_pids(cluster):
    return sorted(e.pid for e in cluster.engines)


def test_apply_runs_once_on_every_engine(bview, bcast_cluster):
    pids = bview.apply_sync(whoami)
    assert sorted(pids) == engine_pids(bcast_cluster)


def test_apply_passes_arguments(bview):
    assert bview.apply_sync(interactive(lambda a, b=0: a * 10 + b), 4, b=2) == [42] * ENGINES


def test_plain_apply_answers_in_target_order(rc, bcast_cluster):
    ids = list(reversed(rc.ids))
    view = rc.broadcast_view(targets=ids)
    ar = view.apply_async(whoami)
    assert ar.get(timeout=15) == [bcast_cluster.engine_by_id(i).pid for i in ids]
    assert sorted(ar.engine_id) == sorted(ids)


def test_a_subset_of_engines(rc, bcast_cluster, bview):
    ids = rc.ids[:2]
    view = rc.broadcast_view(targets=ids, is_coalescing=bview.is_coalescing)
    assert sorted(view.apply_sync(whoami)) == sorted(bcast_cluster.engine_by_id(i).pid for i in ids)


def test_push_then_pull(bview):
    bview.push({"shared": [1, 2, 3], "name": "herd"}, block=True)
    assert bview.pull("shared", block=True) == [[1, 2, 3]] * ENGINES
    assert bview.pull(["shared", "name"], block=True) == [[[1, 2, 3], "herd"]] * ENGINES


def test_pushed_values_are_seen_by_direct_views(bview, rc):
    bview.push({"via_broadcast": os.getpid()}, block=True)
    assert rc[:].pull("via_broadcast", block=True) == [os.getpid()] * ENGINES


def test_an_error_on_one_engine_comes_back(bview, rc):
    if bview.is_coalescing and herdtest.controller_kind() == "python":
        pytest.skip("7.1 answers a coalescing request with the last reply to arrive: an "
                    "error that is not last is lost (docs/schedulers.md, broadcast)")
    rc[:].push({"divisor": 1}, block=True)
    rc[rc.ids[0]].push({"divisor": 0}, block=True)
    with pytest.raises(RemoteError) as excinfo:
        bview.apply_sync(interactive(lambda: 1 / divisor))  # noqa: F821 (remote name)
    if bview.is_coalescing:
        # One merged reply: the client raises the single engine's error as it is.
        assert excinfo.value.ename == "ZeroDivisionError"
    else:
        assert isinstance(excinfo.value, CompositeError)
        assert [e[0] for e in excinfo.value.elist] == ["ZeroDivisionError"]


def test_many_requests_in_flight(bview):
    ars = [bview.apply_async(interactive(lambda i: i + 1), i) for i in range(40)]
    assert [ar.get(timeout=30) for ar in ars] == [[i + 1] * ENGINES for i in range(40)]


# execute, scatter and gather: ipyparallel 7.1 only allows them on plain views.

def test_execute_changes_every_namespace(rc):
    view = rc.broadcast_view()
    view.execute("from_execute = 6 * 7", block=True)
    assert view.pull("from_execute", block=True) == [42] * ENGINES


def test_execute_output_comes_from_every_engine(rc):
    view = rc.broadcast_view()
    ar = view.execute("print('broadcast says', 1 + 1)", block=False)
    ar.get(timeout=15)
    assert ar.wait_for_output(15)
    assert ar.stdout == ["broadcast says 2\n"] * ENGINES


def test_execute_error_names_the_engines(rc):
    view = rc.broadcast_view()
    with pytest.raises(CompositeError) as excinfo:
        view.execute("raise KeyError('missing')", block=True)
    assert [e[0] for e in excinfo.value.elist] == ["KeyError"] * ENGINES


def test_scatter_then_gather(rc):
    view = rc.broadcast_view()
    view.scatter("part", list(range(12)), block=True)
    sizes = view.apply_sync(interactive(lambda: len(part)))  # noqa: F821 (remote name)
    assert sum(sizes) == 12 and len(sizes) == ENGINES
    assert sorted(view.gather("part", block=True)) == list(range(12))


# --- an engine dies with broadcast requests in flight (own cluster: it loses an engine) ---------


def handled(engine):
    """How many requests this engine has started to handle (its log says so)."""
    return engine.log_path.read_text(errors="replace").count("Handling apply_request")


def kill_while_running(rc, view, victim, gate):
    """Submit a gated broadcast on view, SIGKILL victim once it runs it, open the gate;
    returns the AsyncResult."""
    before = handled(victim)
    ar = view.apply_async(herdtest.wait_for_file, str(gate))
    herdtest.wait_until(lambda: handled(victim) > before, 15, what="the request to run on the victim")
    n = len(rc.ids)
    victim.kill(signal.SIGKILL)
    herdtest.wait_until(lambda: len(rc.ids) == n - 1, 15, what="the dead engine to unregister")
    gate.write_text("go")
    return ar


def test_engine_death_fails_only_its_part_and_the_view_keeps_working(cluster_factory, tmp_path):
    cluster = cluster_factory(engines=3)
    rc = cluster.client
    first, second = cluster.engine_by_id(rc.ids[1]), cluster.engine_by_id(rc.ids[2])
    # Plain: the survivors' results and an EngineError for the dead engine, which the
    # client makes itself on the unregistration (the controller must not answer it again).
    ar = kill_while_running(rc, rc.broadcast_view(), first, tmp_path / "gate1")
    with pytest.raises(CompositeError) as excinfo:
        ar.get(timeout=15)
    assert [e[0] for e in excinfo.value.elist] == ["EngineError"]
    # Coalescing: failed as a whole.
    ar = kill_while_running(rc, rc.broadcast_view(is_coalescing=True), second, tmp_path / "gate2")
    with pytest.raises(RemoteError) as excinfo:
        ar.get(timeout=15)
    assert excinfo.value.ename == "EngineError"
    # The client's broadcast socket still works: a second answer for a request the client
    # had already failed used to leave it unread in 7.1's client.
    for view in (rc.broadcast_view(), rc.broadcast_view(is_coalescing=True)):
        assert view.apply_sync(interactive(lambda: 7)) == [7]
