"""Process management for the integration tests: a controller (herdd, or the
Python reference controller of ipyparallel 7.1), real ipyparallel engines and a
real ipyparallel.Client, all in a private temporary profile directory.

Everything a test starts is stopped by PID (or by the process group that the
test itself created), with bounded waits, and every wait polls a condition
instead of sleeping a fixed time.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from ipyparallel import interactive

REPO_ROOT = Path(__file__).resolve().parents[2]

# The interpreter running pytest is Debian's python3 (the one with zmq and
# ipyparallel); engines and the reference controller use the same one.
PYTHON = sys.executable


def controller_kind():
    """Which controller the suite runs against: 'herdd' (default) or 'python'."""
    kind = os.environ.get("HERD_TEST_CONTROLLER", "herdd")
    if kind not in ("herdd", "python"):
        raise ValueError(f"HERD_TEST_CONTROLLER must be 'herdd' or 'python', not {kind!r}")
    return kind


def herdd_path():
    """The herdd binary: $HERDD, else <build dir>/daemon/herdd with the build
    dir taken from $HERD_BUILD_DIR (default: <repo>/build)."""
    explicit = os.environ.get("HERDD")
    if explicit:
        return Path(explicit).resolve()
    build_dir = Path(os.environ.get("HERD_BUILD_DIR", REPO_ROOT / "build"))
    if not build_dir.is_absolute():
        build_dir = REPO_ROOT / build_dir
    return (build_dir / "daemon" / "herdd").resolve()


def wrapper_argv():
    """Command prefix for herdd from $HERDD_WRAPPER (e.g. valgrind ...)."""
    return shlex.split(os.environ.get("HERDD_WRAPPER", ""))


def herdd_extra_args():
    """Arguments added to every herdd command line, from $HERDD_ARGS
    (e.g. "--config my.conf")."""
    return shlex.split(os.environ.get("HERDD_ARGS", ""))


def time_scale():
    """Factor applied to every start-up/stop bound: a wrapped herdd
    (valgrind) starts and stops much more slowly."""
    explicit = os.environ.get("HERD_TEST_TIME_SCALE")
    if explicit:
        return float(explicit)
    return 4.0 if wrapper_argv() and controller_kind() == "herdd" else 1.0


def heartbeat_ms():
    """Heartbeat period given to the controller: short, so engines register fast."""
    return int(os.environ.get("HERD_TEST_PING", "200"))


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value or timeout seconds pass.
    Returns that value; raises TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tail(path, max_lines=200):
    """The last lines of a log file, for failure reports."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    skipped = len(lines) - max_lines
    head = [f"... ({skipped} earlier lines in {path})"] if skipped > 0 else []
    return "\n".join(head + lines[-max_lines:])


# Log files of every controller/engine currently running, so that a failing
# test report can show them (see conftest.pytest_runtest_makereport).
LIVE_LOGS = []


class LoggedProcess:
    """A process a test starts: its Popen (self.proc) in a session of its own, so that its
    whole group can be killed by pgid, with stdout and stderr in self.log_path."""

    proc = None
    returncode = None

    def _spawn(self, argv, env=None):
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                         start_new_session=True)
        LIVE_LOGS.append(self.log_path)

    def forget_log(self):
        if self.log_path in LIVE_LOGS:
            LIVE_LOGS.remove(self.log_path)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout):
        """Wait up to timeout seconds for the process to exit by itself; its status or None."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode


class Controller(LoggedProcess):
    """One controller process writing connection files into profile_dir."""

    def __init__(self, workdir, profile_dir, transport="tcp", extra_args=(), cluster_id=None,
                 log_name="controller.log", profile_args=None):
        self.workdir = Path(workdir)
        self.profile_dir = Path(profile_dir)
        # How the command line names the profile; --profile-dir by default.
        self.profile_args = profile_args or ["--profile-dir", str(self.profile_dir)]
        self.transport = transport
        self.extra_args = list(extra_args)
        self.cluster_id = cluster_id
        self.kind = controller_kind()
        self.log_path = self.workdir / log_name

    # --- command line -------------------------------------------------------
    def argv(self):
        common = [*self.profile_args, f"--ping={heartbeat_ms()}", "--log-level=10"]
        if self.cluster_id is not None:
            common += ["--cluster-id", self.cluster_id]
        if self.kind == "python":
            if self.transport != "tcp":
                raise RuntimeError("the Python reference controller cannot serve ipc peers (spec Q14)")
            return [PYTHON, "-m", "ipyparallel.controller", *common, "--ip=127.0.0.1", *self.extra_args]
        if self.transport == "ipc":
            common += ["--transport", "ipc"]
        else:
            common += ["--ip=127.0.0.1"]
        return [*wrapper_argv(), str(herdd_path()), *common, *herdd_extra_args(), *self.extra_args]

    # --- files --------------------------------------------------------------
    def connection_file(self, side):
        infix = f"-{self.cluster_id}" if self.cluster_id else ""
        return self.profile_dir / "security" / f"ipcontroller{infix}-{side}.json"

    def connection_files(self):
        return [self.connection_file("client"), self.connection_file("engine")]

    def connection_info(self, side):
        return json.loads(self.connection_file(side).read_text())

    def _files_ready(self):
        for path in self.connection_files():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                return False
        return True

    # --- life cycle ---------------------------------------------------------
    def start(self, wait_files=True):
        self._spawn(self.argv())  # the Python controller forks helpers: they share its group
        if wait_files:
            self.wait_for_files()
            if self.kind == "python":
                # 7.1 writes its files before it starts its helper processes and
                # installs its signal handlers; this line comes right before that.
                self.wait_for_log(r"Heartmonitor beating every", timeout=30)
        return self

    def wait_for_files(self, timeout=None):
        timeout = timeout or 30 * time_scale()

        def ready_or_dead():
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited with status {self.proc.returncode} "
                                     f"before writing its connection files:\n{tail(self.log_path)}")
            return self._files_ready()

        wait_until(ready_or_dead, timeout, what="both connection files")

    def stop(self, timeout=None):
        """SIGTERM, bounded wait, then SIGKILL of its process group.
        Returns the exit status (negative for a signal)."""
        timeout = timeout or 15 * time_scale()
        if self.proc is None:
            return None
        helpers = descendants(self.proc.pid)  # the Python controller forks some
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                kill_group(self.proc.pid)  # not reaped yet: the group is still ours
                self.proc.wait(timeout=10)
                self.returncode = self.proc.returncode
                kill_leftovers(helpers)
                raise AssertionError(f"controller ignored SIGTERM for {timeout:.0f}s; killed it")
        self.returncode = self.proc.returncode
        kill_leftovers(helpers)
        return self.returncode

    # --- log ----------------------------------------------------------------
    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def wait_for_log(self, pattern, since=0, timeout=5.0):
        """Wait until a line matching the regex appears after byte offset `since`;
        returns that line."""
        regex = re.compile(pattern, re.IGNORECASE)

        def matching_line():
            for line in self.log_since(since).splitlines():
                if regex.search(line):
                    return line
            return None

        try:
            return wait_until(matching_line, timeout * time_scale(), what=f"log line /{pattern}/")
        except TimeoutError:
            raise AssertionError(f"no controller log line matches /{pattern}/ since offset {since}:\n"
                                 f"{self.log_since(since)[-4000:]}") from None


def kill_group(pgid):
    """SIGKILL a process group that this suite created (start_new_session)
    while its leader is not reaped yet; a group that is already empty is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid):
    """psutil handles on pid's descendants. psutil remembers each one's start
    time, so signalling through them never hits a recycled PID."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def still_running(proc):
    """True while a psutil.Process runs. A zombie counts as gone: orphans are
    reaped by PID 1, which may take its time."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate_leftovers(procs, grace=3):
    """SIGTERM these processes if still running, SIGKILL after `grace` seconds."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    kill_leftovers(procs, grace)


def kill_leftovers(procs, grace=5):
    """Give these processes `grace` seconds to exit, then SIGKILL the ones
    still running."""
    try:
        wait_until(lambda: not any(still_running(p) for p in procs), grace, what="leftovers")
    except TimeoutError:
        pass
    for proc in procs:
        if still_running(proc):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def engine_environment():
    env = dict(os.environ)
    # Silences the debugger banner ipykernel prints at every engine start.
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


class Engine(LoggedProcess):
    """One `python -m ipyparallel.engine` process, in its own process group."""

    def __init__(self, workdir, profile_dir, index, cluster_id=None, extra_args=()):
        self.workdir = Path(workdir)
        self.profile_dir = Path(profile_dir)
        self.index = index
        self.cluster_id = cluster_id
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"engine-{index}.log"
        self._nanny = None  # psutil.Process, once found

    def argv(self):
        argv = [PYTHON, "-m", "ipyparallel.engine", "--profile-dir", str(self.profile_dir),
                "--log-level=20", "--InteractiveShell.colors=nocolor"]
        if self.cluster_id is not None:
            argv += ["--cluster-id", self.cluster_id]
        return argv + self.extra_args

    def start(self):
        self._spawn(self.argv(), env=engine_environment())
        return self

    def nanny_pid(self, timeout=15):
        """PID of the engine's nanny: a child process running
        ipyparallel.engine.nanny (started in a session of its own)."""
        if self._nanny is None:
            def find():
                for child in descendants(self.pid):
                    try:
                        if "ipyparallel.engine.nanny" in " ".join(child.cmdline()):
                            return child
                    except psutil.NoSuchProcess:
                        continue
                return None
            self._nanny = wait_until(find, timeout, what=f"nanny of engine pid {self.pid}")
        return self._nanny.pid

    def registered_id(self):
        """The id this engine reports in its log, or None before registration."""
        match = re.search(r"Completed registration with id (\d+)",
                          self.log_path.read_text(errors="replace"))
        return int(match.group(1)) if match else None

    def kill(self, sig=signal.SIGKILL):
        """Signal the engine process only (not its nanny)."""
        os.kill(self.pid, sig)

    def terminate(self):
        """SIGTERM to the engine's group without waiting (stop() waits), so that
        several engines can shut down at the same time. Notes the nanny first:
        once the engine is gone it cannot be found any more."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._find_nanny_now()
        self._family = descendants(self.proc.pid)  # stop() cleans these up too
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self, timeout=10):
        """SIGTERM to the engine's group, bounded wait, SIGKILL; then make sure
        its nanny (in a session of its own) is gone too."""
        if self.proc is None:
            return
        family = descendants(self.proc.pid)
        family += [p for p in getattr(self, "_family", []) if p not in family]
        nanny = self._find_nanny_now()
        if nanny is not None and nanny not in family:
            family.append(nanny)
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.proc.pid)  # not reaped yet: the group is still ours
                self.proc.wait(timeout=10)
        # The nanny reports its parent's exit at once but then takes seconds to
        # wind down; nothing is left for it to do.
        terminate_leftovers(family)
        self.forget_log()

    def _find_nanny_now(self):
        """The nanny as a psutil.Process if it is (or was) known, else None."""
        if self._nanny is None:
            try:
                self.nanny_pid(timeout=0)
            except TimeoutError:
                return None
        return self._nanny


class Cluster:
    """A controller, N engines and optionally one connected Client."""

    def __init__(self, workdir, transport="tcp", controller_args=(), cluster_id=None,
                 profile_dir=None, profile_args=None):
        self.workdir = Path(workdir)
        self.profile_dir = Path(profile_dir or self.workdir / "profile_herdtest")
        self.cluster_id = cluster_id
        self.controller = Controller(self.workdir, self.profile_dir, transport=transport,
                                     extra_args=controller_args, cluster_id=cluster_id,
                                     profile_args=profile_args)
        self.engines = []
        self.clients = []
        self.old_controllers = []
        # Lifecycle tests that stop the controller themselves set these.
        self.expect_files_removed = True

    def write_herd_conf(self, text):
        """Write the profile's herd.conf (herdd reads it at start; the Python
        controller ignores it)."""
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        (self.profile_dir / "herd.conf").write_text(text)

    def start(self, engines=0, client=True):
        self.controller.start()
        if engines:
            self.add_engines(engines)
        if client:
            rc = self.connect()
            if engines:
                rc.wait_for_engines(engines, timeout=30 * time_scale())
        return self

    def restart_controller(self, log_name):
        """Start a second controller with the same arguments (after the first
        stopped); it logs to log_name."""
        old = self.controller
        old.forget_log()
        self.controller = Controller(self.workdir, self.profile_dir, transport=old.transport,
                                     extra_args=old.extra_args, cluster_id=old.cluster_id,
                                     log_name=log_name, profile_args=old.profile_args)
        self.old_controllers.append(old)
        return self.controller.start()

    def add_engines(self, n):
        new = [Engine(self.workdir, self.profile_dir, len(self.engines) + i, self.cluster_id).start()
               for i in range(n)]
        self.engines.extend(new)
        return new

    def connect(self):
        import ipyparallel as ipp
        kwargs = {"profile_dir": str(self.profile_dir), "timeout": 30 * time_scale()}
        if self.cluster_id is not None:
            kwargs["cluster_id"] = self.cluster_id
        rc = ipp.Client(**kwargs)
        self.clients.append(rc)
        return rc

    @property
    def client(self):
        return self.clients[0]

    def engine_by_id(self, engine_id, timeout=10):
        """The Engine process that registered as engine_id: each engine logs
        "Completed registration with id N" once its registration reply came."""
        def find():
            for engine in self.engines:
                if engine.alive() and engine.registered_id() == engine_id:
                    return engine
            return None
        return wait_until(find, timeout, what=f"the engine process with id {engine_id}")

    def logs(self):
        return ([c.log_path for c in self.old_controllers] + [self.controller.log_path]
                + [e.log_path for e in self.engines])

    def teardown(self):
        """Close clients, stop engines, SIGTERM the controller; assert it
        exited 0 and removed its connection files."""
        problems = []
        for rc in self.clients:
            try:
                rc.close()
            except Exception as exc:  # a closed or broken client must not hide the rest
                problems.append(f"client close failed: {exc!r}")
        # An engine takes seconds to exit: signal all of them before waiting for each.
        for engine in self.engines:
            try:
                engine.terminate()
            except Exception as exc:
                problems.append(f"engine {engine.index} terminate failed: {exc!r}")
        for engine in self.engines:
            try:
                engine.stop()
            except Exception as exc:
                problems.append(f"engine {engine.index} stop failed: {exc!r}")
        try:
            status = self.controller.stop()
            if status != 0:
                problems.append(f"controller exited with status {status} (expected 0)")
        except AssertionError as exc:
            problems.append(str(exc))
        if self.expect_files_removed:
            left = [str(p) for p in self.controller.connection_files() if p.exists()]
            if left:
                problems.append(f"controller left its connection files behind: {left}")
        if problems:
            report = "\n".join(problems)
            for path in self.logs():
                print(f"----- {path.name} -----\n{tail(path)}")
        self.controller.forget_log()
        if problems:
            raise AssertionError(report)


def kill_pid(pid, sig=signal.SIGKILL):
    """Signal one process this suite started (directly or as a descendant)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@interactive
def wait_for_file(path, value=None, limit=60):
    """Run on an engine: block until path exists (a test's gate, so the test decides when
    the task ends), then return value, or the engine's pid when no value is given."""
    import os
    import time
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return os.getpid() if value is None else value
