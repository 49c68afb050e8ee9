"""LoadBalancedView through the task channel with real engines: apply, map
(ordered, unordered, chunksize), imap, @parallel and the Executor interface.

Every test runs twice: with the default `task` scheduler and with the plain
load balancer `lb`, selected by one line of herd.conf (`[scheduler] task = lb`).
"""

import concurrent.futures

import pytest
from ipyparallel import interactive

import herdtest
from conftest import module_cluster

PLUGINS = [
    pytest.param("task"),
    pytest.param("lb", marks=pytest.mark.herd_only("herd.conf selects herd's lb plugin")),
]


@pytest.fixture(scope="module", params=PLUGINS)
def lb_cluster(request, tmp_path_factory):
    """Two engines behind the task channel served by the plugin in the param."""
    conf = None if request.param == "task" else "[scheduler]\ntask = lb\n"
    yield from module_cluster(tmp_path_factory, engines=2, herd_conf=conf)


@pytest.fixture
def rc(lb_cluster):
    return lb_cluster.client


@interactive
def square(x):
    return x * x


@interactive
def value_and_pid(x):
    import os
    return x, os.getpid()


def release(path):
    path.write_text("go")


def test_the_configured_plugin_serves_the_task_channel(lb_cluster, request):
    # Both plugins advertise the default scheme to clients: leastload.
    assert lb_cluster.controller.connection_info("client")["task_scheme"] == "leastload"
    if herdtest.controller_kind() == "herdd":
        plugin = "lb" if (lb_cluster.profile_dir / "herd.conf").exists() else "task"
        assert lb_cluster.controller.wait_for_log(f'loaded scheduler plugin "{plugin}"')


def test_apply_sync_returns_the_value(lview):
    assert lview.apply_sync(square, 12) == 144


def test_apply_async_reports_the_engine_it_ran_on(lview, rc, lb_cluster):
    ar = lview.apply_async(value_and_pid, 3)
    value, pid = ar.get(timeout=15)
    assert value == 3
    assert ar.engine_id in rc.ids
    assert lb_cluster.engine_by_id(ar.engine_id).pid == pid


def test_map_sync_spreads_over_both_engines(lview, lb_cluster):
    results = lview.map_sync(value_and_pid, range(20))
    assert [value for value, _ in results] == list(range(20))
    assert {pid for _, pid in results} == {e.pid for e in lb_cluster.engines}


def test_map_with_several_sequences(lview):
    assert lview.map_sync(interactive(lambda a, b: a - b), [10, 20, 30], [1, 2, 3]) == [9, 18, 27]


def test_ordered_map_yields_in_submission_order(lview, tmp_path):
    gate, free = tmp_path / "gate", tmp_path / "free"
    release(free)
    # Element 0 waits for the gate; element 1 finishes at once.
    amr = lview.map_async(herdtest.wait_for_file, [str(gate), str(free)], ["first", "second"],
                          ordered=True)
    herdtest.wait_until(lambda: amr.progress >= 1, 15, what="the free element to finish")
    assert not amr.ready()
    release(gate)
    assert list(amr) == ["first", "second"]
    # ... although element 1 completed first.
    assert amr.metadata[1]["completed"] < amr.metadata[0]["completed"]


def test_unordered_map_yields_what_finishes_first(lview, tmp_path):
    gate, free = tmp_path / "gate", tmp_path / "free"
    release(free)
    amr = lview.map_async(herdtest.wait_for_file, [str(gate), str(free)], ["slow", "fast"],
                          ordered=False)
    results = iter(amr)
    # Only "fast" can finish until the gate opens, so it must come first.
    assert next(results) == "fast"
    release(gate)
    assert next(results) == "slow"
    with pytest.raises(StopIteration):
        next(results)


def test_map_chunksize_groups_elements_into_tasks(lview):
    amr = lview.map_async(value_and_pid, range(10), chunksize=3)
    results = amr.get(timeout=30)
    assert [value for value, _ in results] == list(range(10))
    # 10 elements in chunks of at most 3: 4 tasks, each a contiguous slice that ran in
    # one engine process, so the engine changes at most 3 times along the results.
    assert len(amr.msg_ids) == 4
    pids = [pid for _, pid in results]
    assert sum(a != b for a, b in zip(pids, pids[1:])) <= 3


def test_map_of_an_empty_sequence(lview):
    assert lview.map_sync(square, []) == []


def test_map_returns_exceptions_when_asked(lview):
    from ipyparallel.error import RemoteError
    results = lview.map_sync(interactive(lambda x: 1 // x), [1, 0, 2], return_exceptions=True)
    assert results[0] == 1 and results[2] == 0
    assert isinstance(results[1], RemoteError) and results[1].ename == "ZeroDivisionError"


def test_imap_consumes_a_generator_lazily(lview):
    consumed = []

    def numbers():
        for i in range(12):
            consumed.append(i)
            yield i

    results = lview.imap(square, numbers(), max_outstanding=2)
    assert next(results) == 0
    # At most max_outstanding tasks were submitted ahead of the first result.
    assert len(consumed) <= 3
    assert list(results) == [i * i for i in range(1, 12)]
    assert consumed == list(range(12))


def test_imap_unordered_gives_every_result(lview):
    assert sorted(lview.imap(square, range(15), ordered=False)) == sorted(i * i for i in range(15))


def test_parallel_decorator_maps_elementwise(lview):
    @lview.parallel(block=True)
    @interactive
    def double(x):
        return 2 * x

    assert double.map(range(6)) == [0, 2, 4, 6, 8, 10]


def test_executor_submit_and_map(lview):
    executor = lview.executor
    with executor:
        futures = [executor.submit(square, i) for i in range(8)]
        done = [f.result() for f in concurrent.futures.as_completed(futures, timeout=30)]
        assert sorted(done) == [i * i for i in range(8)]
        assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_view_wait_and_outstanding(lview, gate):
    ar = lview.apply_async(herdtest.wait_for_file, str(gate), "done")
    assert ar.msg_ids[0] in lview.outstanding
    assert not lview.wait(timeout=0.2)
    release(gate)
    assert lview.wait(timeout=15)
    assert ar.get() == "done"
    assert not lview.outstanding


def test_many_small_tasks_all_come_back(lview):
    assert lview.map_sync(square, range(300)) == [i * i for i in range(300)]


def test_only_the_task_plugin_honours_dependencies(lview, lb_cluster, gate):
    lb = (lb_cluster.profile_dir / "herd.conf").exists()
    blocked = lview.apply_async(herdtest.wait_for_file, str(gate), "blocked")
    with lview.temp_flags(after=blocked):
        dependent = lview.apply_async(square, 3)
    try:
        if lb:
            # lb never reads the metadata: the task runs at once on the free engine.
            assert dependent.get(timeout=15) == 9
            assert not blocked.ready()
        else:
            assert not dependent.wait(0.5), "the dependent task ran before its dependency"
    finally:
        release(gate)
    assert blocked.get(timeout=15) == "blocked"
    assert dependent.get(timeout=15) == 9
