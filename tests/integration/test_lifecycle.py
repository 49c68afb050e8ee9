"""Controller life cycle: connection files, signals, --reuse, shutdown by a
client, cluster ids and profile resolution."""

import os
import signal
import stat

import pytest

import herdtest


def assert_private_connection_files(controller):
    """Both files exist, are mode 0600 in a 0700 security folder (spec 3.2)."""
    for path in controller.connection_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(controller.connection_files()[0].parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_controller_with_status_0_and_removes_files(cluster_factory, sig):
    cluster = cluster_factory(engines=1)
    ctl = cluster.controller
    assert_private_connection_files(ctl)
    assert cluster.client[:].apply_sync(sum, [1, 1]) == [2]

    os.kill(ctl.pid, sig)

    assert ctl.wait_exit(15 * herdtest.time_scale()) == 0
    assert not any(p.exists() for p in ctl.connection_files())


def port_and_key_fields(info):
    return {k: v for k, v in info.items() if k not in ("location",)}


def test_reuse_brings_back_same_ports_and_key_and_keeps_files(cluster_factory):
    cluster = cluster_factory(engines=0, client=False, controller_args=["--reuse"])
    cluster.expect_files_removed = False
    first = {side: cluster.controller.connection_info(side) for side in ("client", "engine")}

    assert cluster.controller.stop() == 0
    assert all(p.exists() for p in cluster.controller.connection_files()), "--reuse removed files"

    ctl = cluster.restart_controller("controller-reused.log")
    second = {side: ctl.connection_info(side) for side in ("client", "engine")}
    assert port_and_key_fields(second["client"]) == port_and_key_fields(first["client"])
    assert port_and_key_fields(second["engine"]) == port_and_key_fields(first["engine"])

    # Peers reading the old files reach the new controller.
    cluster.add_engines(1)
    rc = cluster.connect()
    rc.wait_for_engines(1, timeout=30 * herdtest.time_scale())
    assert rc[:].apply_sync(sum, [2, 3]) == [5]

    rc.close()
    for engine in cluster.engines:
        engine.stop()
    assert ctl.stop() == 0
    assert all(p.exists() for p in ctl.connection_files()), "--reuse removed files at exit"


def test_client_shutdown_with_hub_stops_engines_and_controller(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client

    rc.shutdown(hub=True, block=True)

    assert cluster.controller.wait_exit(15 * herdtest.time_scale()) == 0
    assert not any(p.exists() for p in cluster.controller.connection_files())
    for engine in cluster.engines:
        herdtest.wait_until(lambda: not engine.alive(), 15, what=f"engine {engine.index} to exit")


def test_shutting_down_one_engine_removes_it_from_ids(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client

    rc.shutdown(targets=[0], block=True)

    herdtest.wait_until(lambda: rc.ids == [1], 15, what="engine 0 to leave rc.ids")
    assert rc[1].apply_sync(sum, [1, 2]) == 3


@pytest.mark.herd_only("7.1 keeps unregistered engines in queue_status (spec Q3)")
def test_queue_status_keys_follow_ids_after_an_engine_shut_down(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client
    rc.shutdown(targets=[1], block=True)
    herdtest.wait_until(lambda: rc.ids == [0], 15, what="engine 1 to leave rc.ids")

    status = rc.queue_status()
    status.pop("unassigned")
    assert sorted(status) == rc.ids == [0]


def test_queue_status_counts_completed_work(cluster_factory):
    cluster = cluster_factory(engines=2)
    rc = cluster.client
    before = rc.queue_status()
    assert sorted(k for k in before if k != "unassigned") == sorted(rc.ids)

    rc[0].apply_sync(sum, [1])
    rc[0].apply_sync(sum, [2])

    after = rc.queue_status()
    assert after[0]["completed"] == before[0]["completed"] + 2
    assert after[1]["completed"] == before[1]["completed"]
    assert rc.queue_status(targets=0) == after[0]


def test_cluster_id_names_the_connection_files(cluster_factory):
    cluster = cluster_factory(engines=1, cluster_id="herdtest7")
    names = sorted(p.name for p in cluster.controller.connection_files())
    assert names == ["ipcontroller-herdtest7-client.json", "ipcontroller-herdtest7-engine.json"]
    assert all(p.exists() for p in cluster.controller.connection_files())
    assert cluster.client[:].apply_sync(sum, [4, 5]) == [9]


def test_ipython_dir_and_profile_name_locate_the_profile(cluster_factory, tmp_path):
    ipython_dir = tmp_path / "ipython-elsewhere"
    ipython_dir.mkdir()
    profile_dir = ipython_dir / "profile_herdnamed"
    cluster = cluster_factory(engines=1, profile_dir=profile_dir,
                              profile_args=["--ipython-dir", str(ipython_dir), "--profile", "herdnamed"])
    assert cluster.controller.connection_file("client").exists()
    assert cluster.client[:].apply_sync(sum, [1, 2]) == [3]
