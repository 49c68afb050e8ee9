"""Helpers for the native-peer tests: start `herd engine` processes (native
engines) and `herd bench` runs, bounded in time, stopped by PID."""

import os
import signal
import subprocess
from pathlib import Path

import herdtest


def herd_path():
    """The `herd` program: $HERD, else <build dir>/tools/herd (build dir as for herdd)."""
    explicit = os.environ.get("HERD")
    if explicit:
        return Path(explicit).resolve()
    return (herdtest.herdd_path().parent.parent / "tools" / "herd").resolve()


class NativeEngines(herdtest.LoggedProcess):
    """One `herd engine` process serving `count` engines."""

    def __init__(self, workdir, profile_dir, executor="shell", count=1, cluster_id=None,
                 extra_args=(), name="native-engines", env=None):
        self.env = env  # extra environment variables
        self.workdir = Path(workdir)
        self.profile_dir = Path(profile_dir)
        self.executor = executor
        self.count = count
        self.cluster_id = cluster_id
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"{name}.log"

    def argv(self):
        argv = [str(herd_path()), "engine", "--profile-dir", str(self.profile_dir),
                "--executor", self.executor, "--count", str(self.count)]
        if self.cluster_id is not None:
            argv += ["--cluster-id", self.cluster_id]
        return argv + self.extra_args

    def start(self):
        self._spawn(self.argv(), env={**os.environ, **(self.env or {})})
        return self

    def stop(self, timeout=10):
        """SIGTERM (the engines unregister), bounded wait, then SIGKILL. Returns the status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                herdtest.kill_group(self.proc.pid)
                self.proc.wait(timeout=10)
        # Shell commands started by the engines run in their own groups; anything left
        # in the engine's group goes too.
        herdtest.kill_group(self.proc.pid)
        self.forget_log()
        return self.proc.returncode

    def log(self):
        return self.log_path.read_text(errors="replace")


def run_herd(args, timeout, cwd=None):
    """Run `herd ARGS...` to completion (bounded); returns CompletedProcess."""
    return subprocess.run([str(herd_path()), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          start_new_session=True)
