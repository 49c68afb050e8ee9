"""Scheduling schemes chosen in herd.conf change where load-balanced tasks go.

Each test starts herdd with two engines and `[scheduler.task] scheme = ...`
(served by the `task` plugin, and again by `lb`: one line of herd.conf), then
observes placement, not just success:

* sequential tasks (all loads 0 when each is placed): `lru`, `leastload` and
  `pure` rotate strictly; `plainrandom` and `weighted` repeat the previous
  engine half of the time; `twobin` (the less recently used of two random
  draws) a quarter of the time;
* a task blocked on one engine (hwm 0, so that engine stays a candidate):
  `leastload` and `weighted` send every other task elsewhere, `lru` and `pure`
  rotate onto the busy engine anyway (`pure` even with hwm 1: it has no hwm).

The random schemes are tested with the task plugin only: both plugins draw
through the same code (schedulers/common), and the lb-specific parts
(candidates, load, hwm, pure's missing hwm) are covered by the other three.

The statistical bounds are at least 4 standard deviations wide (200 tasks):
they fail by chance less than once in 10^4 runs.

Last, an option the chosen scheduler does not know stops herdd at start-up with
a message naming it.
"""

import pytest
from ipyparallel import interactive

import herdtest

PLUGINS = [
    pytest.param("task"),
    pytest.param("lb", marks=pytest.mark.herd_only("herd.conf selects herd's lb plugin")),
]

SEQUENTIAL = 200


@interactive
def getpid():
    import os
    return os.getpid()


def herd_conf(plugin, scheme, hwm):
    lines = ["[scheduler]", f"task = {plugin}", "", "[scheduler.task]", f"scheme = {scheme}",
             f"hwm = {hwm}", ""]
    return "\n".join(lines)


def start_scheme(cluster_factory, plugin, scheme, hwm=0):
    """A controller serving the task channel with plugin + scheme, two engines, a
    client; returns (cluster, load-balanced view)."""
    args = ()
    if herdtest.controller_kind() == "python":
        args = (f"--scheme={scheme}", f"--hwm={hwm}")  # 7.1 does not read herd.conf
    cluster = cluster_factory(start=False, controller_args=args)
    cluster.write_herd_conf(herd_conf(plugin, scheme, hwm))
    cluster.start(engines=2)
    assert cluster.controller.connection_info("client")["task_scheme"] == scheme
    client = cluster.client
    if scheme == "pure":
        # A 7.1 client under "pure" stops load balancing for good as soon as its engine
        # ids are not 0..n-1, e.g. when engine 1's registration notification arrives
        # before engine 0's. A client connected after both registered gets them in one
        # connection_reply.
        client = cluster.connect()
    return cluster, client.load_balanced_view()


def sequential_pids(view, n=SEQUENTIAL):
    """Engine pid of n tasks, each placed after the previous one finished."""
    return [view.apply_sync(getpid) for _ in range(n)]


def repeat_fraction(pids):
    """How often a task ran on the same engine as the one before it."""
    return sum(a == b for a, b in zip(pids, pids[1:])) / (len(pids) - 1)


def quick_tasks_behind_a_blocker(view, gate, n=10):
    """Block one engine, then run n quick tasks one after another (each must
    finish: the scheme has to avoid the busy engine). Returns (blocker pid, pids)."""
    blocker = view.apply_async(herdtest.wait_for_file, str(gate))
    pids = [view.apply_async(getpid).get(timeout=15) for _ in range(n)]
    gate.write_text("go")
    return blocker.get(timeout=15), pids


def rotation_onto_the_busy_engine(view, gate):
    """Block one engine, run one quick task (it lands on the other engine), then
    place a second one: a rotating scheme puts it on the busy engine, where it
    waits for the blocker. Returns (blocker pid, first pid, second AsyncResult)."""
    blocker = view.apply_async(herdtest.wait_for_file, str(gate))
    first = view.apply_async(getpid).get(timeout=15)
    second = view.apply_async(getpid)
    assert not second.wait(0.3), "the second quick task did not wait for the busy engine"
    gate.write_text("go")
    blocker_pid = blocker.get(timeout=15)
    second.get(timeout=15)
    return blocker_pid, first, second, blocker


@pytest.mark.parametrize("plugin", PLUGINS)
def test_leastload_avoids_the_busy_engine(cluster_factory, plugin, gate):
    cluster, view = start_scheme(cluster_factory, plugin, "leastload")
    pids = sequential_pids(view, 20)
    assert repeat_fraction(pids) == 0, "equal loads: the least recently used engine goes first"
    blocker, quick = quick_tasks_behind_a_blocker(view, gate)
    assert blocker not in quick
    assert len(set(quick)) == 1


@pytest.mark.parametrize("plugin", PLUGINS)
def test_lru_rotates_whatever_the_load(cluster_factory, plugin, gate):
    cluster, view = start_scheme(cluster_factory, plugin, "lru")
    assert repeat_fraction(sequential_pids(view, 20)) == 0
    blocker, first, second, blocker_ar = rotation_onto_the_busy_engine(view, gate)
    assert first != blocker
    assert second.get() == blocker
    assert second.metadata["started"] >= blocker_ar.metadata["completed"]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_pure_rotates_and_has_no_hwm(cluster_factory, plugin, gate):
    # hwm = 1 would keep a busy engine out of reach; pure ignores it, as 7.1's relay does.
    cluster, view = start_scheme(cluster_factory, plugin, "pure", hwm=1)
    assert repeat_fraction(sequential_pids(view, 20)) == 0
    blocker, first, second, _ = rotation_onto_the_busy_engine(view, gate)
    assert first != blocker
    assert second.get() == blocker


def test_plainrandom_repeats_half_the_time(cluster_factory, plugin="task"):
    cluster, view = start_scheme(cluster_factory, plugin, "plainrandom")
    pids = sequential_pids(view)
    assert set(pids) == {e.pid for e in cluster.engines}
    assert 0.35 <= repeat_fraction(pids) <= 0.65


def test_twobin_prefers_the_less_recently_used(cluster_factory, plugin="task"):
    cluster, view = start_scheme(cluster_factory, plugin, "twobin")
    # The less recently used of two independent draws: the engine that just ran a
    # task is picked only when both draws hit it, 1/4 of the time with two engines.
    assert 0.12 <= repeat_fraction(sequential_pids(view)) <= 0.38


@pytest.mark.herd_only("7.1's weighted scheme needs numpy, which Debian's python3-ipyparallel does "
                       "not pull in: without it, 7.1 never places a task")
def test_weighted_is_random_among_idle_engines_and_avoids_busy_ones(cluster_factory, gate, plugin="task"):
    cluster, view = start_scheme(cluster_factory, plugin, "weighted")
    assert 0.35 <= repeat_fraction(sequential_pids(view)) <= 0.65
    blocker, quick = quick_tasks_behind_a_blocker(view, gate, n=20)
    assert blocker not in quick


# --- options a scheduler does not understand ---------------------------------------------------

def refused_start(tmp_path, conf):
    """Start herdd with this herd.conf; it must exit 1 ("cannot start") before writing
    its connection files. Returns its log."""
    profile = tmp_path / "profile_refused"
    profile.mkdir()
    (profile / "herd.conf").write_text(conf)
    controller = herdtest.Controller(tmp_path, profile)
    controller.start(wait_files=False)
    try:
        status = controller.wait_exit(15 * herdtest.time_scale())
        assert status is not None, "herdd kept running with an option its scheduler does not know"
        # Exactly 1: under valgrind a memory error or leak on this error path exits 99.
        assert status == 1, f"herdd exited {status}, not 1 (cannot start):\n{herdtest.tail(controller.log_path)}"
        assert not any(p.exists() for p in controller.connection_files())
    finally:
        if controller.alive():
            controller.stop()
        controller.forget_log()
    return controller.log_path.read_text(errors="replace")


@pytest.mark.herd_only("herd.conf")
@pytest.mark.parametrize("plugin, option, named", [
    ("lb", "retries = 1", ["retries", "scheduler.task", "lb"]),
    ("task", "speed = fast", ["speed", "scheduler.task", "task"]),
])
def test_an_unknown_scheduler_option_stops_herdd(tmp_path, plugin, option, named):
    log = refused_start(tmp_path, f"[scheduler]\ntask = {plugin}\n\n[scheduler.task]\n{option}\n")
    for word in named:
        assert word in log, log


@pytest.mark.herd_only("herd.conf")
def test_an_unknown_scheme_stops_herdd(tmp_path):
    log = refused_start(tmp_path, "[scheduler.task]\nscheme = fastest\n")
    assert "fastest" in log and "scheme" in log, log


@pytest.mark.herd_only("herd.conf")
def test_an_option_for_a_scheduler_without_options_stops_herdd(tmp_path):
    log = refused_start(tmp_path, "[scheduler.broadcast]\nscheme = lru\n")
    assert "scheme" in log and "broadcast" in log, log
