"""Helpers for the `herd cluster` tests: run the command (bounded), read its state
file, find what a cluster runs, and make sure nothing it started outlives a test.

A cluster's processes are not children of the test (`herd cluster start` exits and
leaves them running), so they are found through the state file and stopped by PID, each
checked against the start time the state file recorded so that a reused PID is never
signalled."""

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

import herdtest
from native_helpers import run_herd

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

# A start waits for Python engines: a few seconds each on a loaded 2-CPU machine.
START_TIMEOUT = 60 * herdtest.time_scale()


def start_time_of(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None when pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def is_running(pid, start_time):
    """pid still runs and is the process that was recorded (not a reused pid)."""
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return start_time_of(pid) == start_time


class HerdCluster:
    """`herd cluster` on one profile folder and cluster id."""

    def __init__(self, profile_dir, cluster_id=None):
        self.profile_dir = Path(profile_dir)
        self.cluster_id = cluster_id

    def where(self):
        args = ["--profile-dir", str(self.profile_dir)]
        if self.cluster_id is not None:
            args += ["--cluster-id", self.cluster_id]
        return args

    def run(self, command, *args, timeout=START_TIMEOUT + 30):
        result = run_herd(["cluster", command, *self.where(), *args], timeout=timeout)
        # so that a failing test's report shows them (conftest.pytest_runtest_makereport)
        herdtest.LIVE_LOGS.extend(p for p in self.logs() if p not in herdtest.LIVE_LOGS)
        return result

    def start(self, *args, timeout=START_TIMEOUT):
        """`herd cluster start` with a short heartbeat; asserts that it succeeded."""
        result = self.run("start", f"--ping={herdtest.heartbeat_ms()}", f"--timeout={timeout:.0f}", *args,
                          timeout=timeout + 30)
        assert result.returncode == 0, f"start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    def stop(self, *args):
        return self.run("stop", *args, timeout=60)

    # --- files ---------------------------------------------------------------
    @property
    def state_path(self):
        infix = f"-{self.cluster_id}" if self.cluster_id else ""
        return self.profile_dir / "security" / f"herd-cluster{infix}.json"

    def state(self):
        return json.loads(self.state_path.read_text())

    def connection_file(self, side):
        infix = f"-{self.cluster_id}" if self.cluster_id else ""
        return self.profile_dir / "security" / f"ipcontroller{infix}-{side}.json"

    def logs(self):
        """The cluster's log files (herdd's and the local engines')."""
        infix = f"-{self.cluster_id}" if self.cluster_id else ""
        return sorted((self.profile_dir / "log").glob(f"herd-cluster{infix}-*.log"))

    def client(self, **kwargs):
        import ipyparallel as ipp
        return ipp.Client(str(self.connection_file("client")), timeout=30, **kwargs)

    # --- processes -------------------------------------------------------------
    def recorded(self):
        """(pid, start_time) of the controller and every local engine set in the state file."""
        state = self.state()
        procs = [state["controller"], *state["engine_sets"]]
        return [(p["pid"], p["start_time"]) for p in procs if p["kind"] == "local"]

    def family(self):
        """psutil handles on every recorded process that runs and all its descendants
        (an ipengine's nanny lives in a session of its own): what a stop must end."""
        found = []
        for pid, start in self.recorded():
            if not is_running(pid, start):
                continue
            try:
                proc = psutil.Process(pid)
                found += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found


def still_running(procs):
    return [p for p in procs if herdtest.still_running(p)]


def mentions(proc, text):
    try:
        return any(text in arg for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def processes_mentioning(text):
    """Every process whose command line names `text` (a test's own temporary folder)."""
    return [p for p in psutil.process_iter() if p.pid != os.getpid() and mentions(p, text)]


def leftovers(tmp_path, families):
    """Processes a test's clusters left behind: anything naming the test's folder, plus
    the recorded families (nannies do not name it). Each is signalled by PID through
    psutil, which checks the process's start time."""
    procs = processes_mentioning(str(tmp_path))
    procs += [p for family in families for p in family if p not in procs]
    return still_running(procs)


def reap(procs):
    """SIGTERM, a bounded wait, SIGKILL: only the given processes."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    herdtest.kill_leftovers(procs, grace=5)


@pytest.fixture
def clusters(tmp_path):
    """make(cluster_id=None, profile_dir=None) -> HerdCluster on the test's profile
    folder. At teardown every cluster still recorded is stopped with `herd cluster stop`;
    anything still running after that is killed by PID and fails the test."""
    made = []
    families = []

    def make(cluster_id=None, profile_dir=None):
        cluster = HerdCluster(profile_dir or tmp_path / "profile", cluster_id)
        made.append(cluster)
        return cluster

    logs_before = set(herdtest.LIVE_LOGS)
    yield make
    problems = []
    for cluster in made:
        if cluster.state_path.exists():
            families.append(cluster.family())
            result = cluster.stop()
            if result.returncode != 0:
                problems.append(f"herd cluster stop failed ({result.returncode}): {result.stderr}")
    # herdd is not the test's child, so its exit status (86/87 on a sanitizer report)
    # cannot be checked; its log can.
    for cluster in made:
        for log in cluster.logs():
            text = log.read_text(errors="replace")
            if any(mark in text for mark in SANITIZER_MARKS):
                problems.append(f"sanitizer report in {log}:\n{herdtest.tail(log, 60)}")
    left = leftovers(tmp_path, families)
    if left:
        problems.append("left running: " + ", ".join(f"{p.pid} {' '.join(p.cmdline())}" for p in left))
        reap(left)
    herdtest.LIVE_LOGS[:] = [p for p in herdtest.LIVE_LOGS if p in logs_before]
    if problems:
        pytest.fail("teardown: " + "\n".join(problems), pytrace=False)
