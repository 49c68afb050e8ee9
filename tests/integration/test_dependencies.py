"""The task scheduler's features seen from a real LoadBalancedView: time (after)
and location (follow) dependencies, success/failure conditions, impossible and
invalid dependencies, timeouts, retries (also when an engine dies mid-task),
targets, and engine-side @depend refusals."""

import os
import signal

import pytest
from ipyparallel import Dependency, depend, interactive
from ipyparallel.error import RemoteError

import herdtest
from conftest import module_cluster

# herdd waits stranded_delay_ms before it declares the tasks of a dead engine lost
# (ipyparallel: a fixed 5 s); shorter here so the retry test stays fast. The Python
# reference controller ignores herd.conf.
FAST_STRANDED = "[scheduler.task]\nstranded_delay_ms = 300\n"


@pytest.fixture(scope="module")
def dep_cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, engines=2, herd_conf=FAST_STRANDED)


@pytest.fixture
def rc(dep_cluster):
    return dep_cluster.client


@interactive
def run_info(value):
    """(value, engine pid, wall-clock start)"""
    import os
    import time
    return value, os.getpid(), time.time()


@interactive
def fail(message):
    raise ValueError(message)


def remote_ename(ar, timeout=15):
    with pytest.raises(RemoteError) as excinfo:
        ar.get(timeout=timeout)
    return excinfo.value.ename


def still_waiting(ar, seconds=0.5):
    """True if ar is not done after a short bounded wait (a negative check)."""
    return not ar.wait(seconds)


def submit(view, f, *args, **flags):
    with view.temp_flags(**flags):
        return view.apply_async(f, *args)


# --- after: time dependencies -----------------------------------------------------------

def test_after_waits_for_the_task_it_names(lview, gate):
    first = lview.apply_async(herdtest.wait_for_file, str(gate), "first")
    second = submit(lview, run_info, "second", after=first)
    # An engine is free, but the dependency holds the second task back.
    assert still_waiting(second)
    gate.write_text("go")
    assert first.get(timeout=15) == "first"
    assert second.get(timeout=15)[0] == "second"
    # The engines' clocks: the second task started after the first one's reply was made.
    assert second.metadata["started"] >= first.metadata["completed"]


def test_after_chain_runs_in_order(lview):
    previous = lview.apply_async(run_info, 0)
    chain = [previous]
    for i in range(1, 6):
        previous = submit(lview, run_info, i, after=previous)
        chain.append(previous)
    starts = [ar.get(timeout=15)[2] for ar in chain]
    assert [ar.get()[0] for ar in chain] == list(range(6))
    assert starts == sorted(starts)


def test_after_any_of_several(lview, gate):
    blocked = lview.apply_async(herdtest.wait_for_file, str(gate), "blocked")
    done = lview.apply_async(run_info, "done")
    done.get(timeout=15)
    # all=False: one finished dependency is enough.
    either = submit(lview, run_info, "either", after=Dependency([blocked.msg_ids[0], done.msg_ids[0]],
                                                                  all=False))
    assert either.get(timeout=15)[0] == "either"
    assert not blocked.ready()
    gate.write_text("go")
    blocked.get(timeout=15)


# --- success / failure conditions ----------------------------------------------------

def test_after_a_failed_task_is_impossible(lview):
    failed = lview.apply_async(fail, "boom")
    assert remote_ename(failed) == "ValueError"
    dependent = submit(lview, run_info, "never", after=failed)
    assert remote_ename(dependent) == "ImpossibleDependency"


def test_failure_only_dependency_runs_after_a_failure(lview):
    failed = lview.apply_async(fail, "boom")
    cleanup = submit(lview, run_info, "cleanup",
                     after=Dependency(failed.msg_ids, success=False, failure=True))
    assert cleanup.get(timeout=15)[0] == "cleanup"


def test_failure_only_dependency_is_impossible_after_a_success(lview):
    ok = lview.apply_async(run_info, "ok")
    ok.get(timeout=15)
    cleanup = submit(lview, run_info, "cleanup",
                     after=Dependency(ok.msg_ids, success=False, failure=True))
    assert remote_ename(cleanup) == "ImpossibleDependency"


def test_success_or_failure_dependency_runs_either_way(lview):
    failed = lview.apply_async(fail, "boom")
    ok = lview.apply_async(run_info, "ok")
    both = submit(lview, run_info, "both",
                  after=Dependency(failed.msg_ids + ok.msg_ids, success=True, failure=True))
    assert both.get(timeout=15)[0] == "both"


def test_a_failure_cascades_down_a_chain(lview):
    failed = lview.apply_async(fail, "boom")
    middle = submit(lview, run_info, "middle", after=failed)
    last = submit(lview, run_info, "last", after=middle)
    assert remote_ename(middle) == "ImpossibleDependency"
    assert remote_ename(last) == "ImpossibleDependency"


# --- follow: location dependencies ---------------------------------------------------

def test_follow_runs_where_the_dependency_ran(lview):
    anchor = lview.apply_async(run_info, "anchor")
    _, anchor_pid, _ = anchor.get(timeout=15)
    followers = [submit(lview, run_info, i, follow=anchor) for i in range(8)]
    assert {ar.get(timeout=15)[1] for ar in followers} == {anchor_pid}
    # Without follow the same burst uses both engines.
    free = lview.map_async(run_info, range(8))
    assert len({pid for _, pid, _ in free.get(timeout=15)}) == 2


def test_follow_chain_stays_on_one_engine(lview):
    previous = lview.apply_async(run_info, 0)
    pids = set()
    for i in range(1, 5):
        previous = submit(lview, run_info, i, follow=previous, after=previous)
        pids.add(previous.get(timeout=15)[1])
    assert len(pids) == 1


def test_follow_tasks_on_different_engines_is_impossible(lview, rc):
    here = rc.load_balanced_view(targets=[rc.ids[0]]).apply_async(run_info, "a")
    there = rc.load_balanced_view(targets=[rc.ids[1]]).apply_async(run_info, "b")
    assert here.get(timeout=15)[1] != there.get(timeout=15)[1]
    both = submit(lview, run_info, "both", follow=[here, there])
    assert remote_ename(both) == "ImpossibleDependency"
    # all=False: either location will do.
    either = submit(lview, run_info, "either",
                    follow=Dependency(here.msg_ids + there.msg_ids, all=False))
    assert either.get(timeout=15)[0] == "either"


# --- invalid dependencies and timeouts -------------------------------------------------

def test_dependency_on_an_unknown_msg_id_is_invalid(lview):
    ar = submit(lview, run_info, "x", after=["no-such-msg-id"])
    assert remote_ename(ar) == "InvalidDependency"


def test_dependency_timeout(lview, gate):
    blocked = lview.apply_async(herdtest.wait_for_file, str(gate), "blocked")
    waiting = submit(lview, run_info, "late", after=blocked, timeout=0.3)
    assert remote_ename(waiting) == "TaskTimeout"
    gate.write_text("go")
    assert blocked.get(timeout=15) == "blocked"


def test_timeout_waiting_for_a_busy_target(lview, rc, gate):
    target = rc.ids[0]
    blocked = submit(lview, herdtest.wait_for_file, str(gate), "blocked", targets=[target])
    # hwm 1: the only allowed engine is busy, so this task waits and times out.
    waiting = submit(lview, run_info, "late", targets=[target], timeout=0.3)
    assert remote_ename(waiting) == "TaskTimeout"
    gate.write_text("go")
    blocked.get(timeout=15)


# --- targets ---------------------------------------------------------------------------

def test_targets_restrict_placement(rc, dep_cluster):
    for engine_id in rc.ids:
        view = rc.load_balanced_view(targets=[engine_id])
        pids = {pid for _, pid, _ in view.map_sync(run_info, range(6))}
        assert pids == {dep_cluster.engine_by_id(engine_id).pid}


def test_targets_per_task_flag(lview, rc, dep_cluster):
    target = rc.ids[-1]
    ars = [submit(lview, run_info, i, targets=[target]) for i in range(4)]
    assert {ar.get(timeout=15)[1] for ar in ars} == {dep_cluster.engine_by_id(target).pid}


# --- retries ---------------------------------------------------------------------------

def test_retries_move_a_failing_task_to_another_engine(lview, tmp_path):
    marker = tmp_path / "failed-once"

    @interactive
    def fail_first_time(path):
        import os
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            raise RuntimeError("first attempt fails")
        return os.getpid()

    ar = submit(lview, fail_first_time, str(marker), retries=1)
    second_pid = ar.get(timeout=15)
    assert second_pid != int(marker.read_text())


def test_without_retries_the_failure_comes_back(lview):
    assert remote_ename(submit(lview, fail, "once", retries=0)) == "ValueError"


# --- engine-side @depend refusals ---------------------------------------------------------

def test_engine_side_dependency_picks_the_engine_that_accepts(lview, dep_cluster, rc):
    wanted = dep_cluster.engine_by_id(rc.ids[1]).pid

    @interactive
    def on_pid(pid):
        import os
        return os.getpid() == pid

    @depend(on_pid, wanted)
    @interactive
    def where():
        import os
        return os.getpid()

    assert [lview.apply_async(where).get(timeout=15) for _ in range(4)] == [wanted] * 4


def test_engine_side_dependency_no_target_accepts(lview, rc):
    @interactive
    def never():
        return False

    @depend(never)
    @interactive
    def nowhere():
        return "ran"

    # Once every allowed target has refused it, the task is impossible. (Without
    # targets it would wait for an engine that might accept it, as in ipyparallel.)
    assert remote_ename(submit(lview, nowhere, targets=rc.ids)) == "ImpossibleDependency"


# --- an engine killed mid-task (own cluster: it loses an engine) -------------------------------

def test_retry_after_the_engine_dies_mid_task(cluster_factory, tmp_path):
    cluster = cluster_factory(engines=2, start=False)
    cluster.write_herd_conf(FAST_STRANDED)
    cluster.start(engines=2)
    rc = cluster.client
    lview = rc.load_balanced_view()
    gate, started = tmp_path / "gate", tmp_path / "started"

    @interactive
    def note_pid_then_wait(started, gate):
        import os
        import time
        with open(f"{started}-{os.getpid()}", "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(gate)
            time.sleep(0.01)
        return os.getpid()

    ar = submit(lview, note_pid_then_wait, str(started), str(gate), retries=1)
    first = herdtest.wait_until(lambda: list(tmp_path.glob("started-*")), 15, what="the task to start")
    victim_pid = int(first[0].name.split("-")[-1])
    victim = next(e for e in cluster.engines if e.pid == victim_pid)
    victim.kill(signal.SIGKILL)
    herdtest.wait_until(lambda: len(rc.ids) == 1, 15, what="the dead engine to unregister")
    gate.write_text("go")
    survivor_pid = ar.get(timeout=30)
    assert survivor_pid != victim_pid
    assert survivor_pid in {e.pid for e in cluster.engines if e.alive()}
    assert os.path.exists(f"{started}-{survivor_pid}")
