"""pytest fixtures: a controller (herdd by default, or the Python reference
controller with HERD_TEST_CONTROLLER=python) with real ipyparallel engines
and clients in a temporary IPYTHONDIR. See docs/testing.md."""

import os

import pytest

import herdtest
from herdtest import Cluster


def pytest_configure(config):
    config.addinivalue_line("markers", "herd_only(reason): runs only against herdd, not the "
                            "Python reference controller")
    try:
        kind = herdtest.controller_kind()
    except ValueError as exc:
        raise pytest.UsageError(str(exc))
    if kind == "herdd" and not os.access(herdtest.herdd_path(), os.X_OK):
        raise pytest.UsageError(
            f"herdd not found at {herdtest.herdd_path()}: build it (ninja -C build), or set HERDD "
            "or HERD_BUILD_DIR, or run against the reference with HERD_TEST_CONTROLLER=python")


def pytest_report_header(config):
    kind = herdtest.controller_kind()
    where = f" ({herdtest.herdd_path()})" if kind == "herdd" else ""
    wrapper = os.environ.get("HERDD_WRAPPER")
    extra = f", wrapped by: {wrapper}" if wrapper and kind == "herdd" else ""
    return f"herd integration: controller = {kind}{where}{extra}, ping = {herdtest.heartbeat_ms()} ms"


def pytest_collection_modifyitems(config, items):
    if herdtest.controller_kind() == "herdd":
        return
    for item in items:
        marker = item.get_closest_marker("herd_only")
        if marker:
            reason = marker.args[0] if marker.args else "herdd-specific behaviour"
            item.add_marker(pytest.mark.skip(reason=f"herdd only: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def private_ipython_dir(tmp_path_factory):
    """Keep every peer away from ~/.ipython."""
    path = tmp_path_factory.mktemp("ipython")
    old = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("IPYTHONDIR", None)
    else:
        os.environ["IPYTHONDIR"] = old


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the logs of every running controller/engine to a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in list(herdtest.LIVE_LOGS):
            report.sections.append((f"log {path.name}", herdtest.tail(path)))


@pytest.fixture
def cluster_factory(tmp_path):
    """make(engines=0, client=True, transport='tcp', controller_args=(), cluster_id=None)
    starts a cluster; all of them are torn down (and checked) after the test."""
    made = []

    def make(engines=0, client=True, transport="tcp", controller_args=(), cluster_id=None,
             start=True, **cluster_kwargs):
        workdir = tmp_path / f"cluster{len(made)}"
        cluster = Cluster(workdir, transport=transport, controller_args=controller_args,
                          cluster_id=cluster_id, **cluster_kwargs)
        made.append(cluster)
        if start:
            cluster.start(engines=engines, client=client)
        return cluster

    yield make
    errors = []
    for cluster in reversed(made):
        try:
            cluster.teardown()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("teardown: " + "\n".join(errors), pytrace=False)


@pytest.fixture
def lview(rc):
    """A load-balanced view on the client of the test module's own `rc` fixture."""
    return rc.load_balanced_view()


@pytest.fixture
def gate(tmp_path):
    """A file that gated tasks wait for (herdtest.wait_for_file); opened at teardown at the
    latest, so a test failing half-way leaves no task blocking the engines of the next."""
    path = tmp_path / "gate"
    yield path
    path.write_text("go")


def module_cluster(tmp_path_factory, engines, transport="tcp", herd_conf=None, controller_args=()):
    """Generator body for module-scoped cluster fixtures; herd_conf is the text
    of the profile's herd.conf, if any."""
    cluster = Cluster(tmp_path_factory.mktemp(f"cluster-{transport}"), transport=transport,
                      controller_args=controller_args)
    if herd_conf is not None:
        cluster.write_herd_conf(herd_conf)
    try:
        cluster.start(engines=engines)
        yield cluster
    finally:
        cluster.teardown()
