"""`herd cluster start --launcher mpiexec|ssh`: real Python engines started through
Open MPI's mpiexec, and over ssh by an sshd that the test runs on a free loopback port
with a throwaway key (stopped by its PID at the end). scripts/setup.sh installs
openmpi-bin and openssh-server."""

import os
import shutil
import socket
import subprocess
import time

import pytest

import herdtest
from cluster_helpers import clusters, processes_mentioning, still_running  # noqa: F401 (fixture)

import ipyparallel as ipp

pytestmark = pytest.mark.herd_only("herd cluster always starts herdd")

MPIEXEC = "mpiexec.openmpi"


def rank_and_pid():
    import os
    return os.environ.get("OMPI_COMM_WORLD_RANK"), os.getpid()


# --- mpiexec ------------------------------------------------------------------------

def test_mpiexec_starts_python_engines_as_ranks(clusters):
    assert shutil.which(MPIEXEC), f"{MPIEXEC} missing: scripts/setup.sh installs openmpi-bin"
    cluster = clusters()
    # 3 ranks on a 2-CPU machine: herd cluster lets Open MPI oversubscribe.
    result = cluster.start("-n", "3", "--launcher", "mpiexec", "--mpiexec", MPIEXEC)
    assert "3 engines (ipengine, launcher mpiexec)" in result.stdout
    sets = cluster.state()["engine_sets"]
    assert [(s["kind"], s["engines"]) for s in sets] == [("local", 3)]
    rc = cluster.client()
    try:
        answers = rc[:].apply_sync(ipp.interactive(rank_and_pid))
    finally:
        rc.close()
    assert sorted(rank for rank, _ in answers) == ["0", "1", "2"]
    family = cluster.family()
    assert {pid for _, pid in answers} <= {p.pid for p in family}  # the ranks are mpiexec's
    result = cluster.stop()
    assert result.returncode == 0, result.stderr
    assert "3 engines stopped" in result.stdout
    assert not still_running(family)


def test_mpiexec_that_fails_stops_the_controller(clusters):
    cluster = clusters()
    result = cluster.run("start", "-n", "2", "--launcher", "mpiexec", "--mpiexec",
                         f"{MPIEXEC} --no-such-option", "--timeout=30")
    assert result.returncode == 1
    assert "exited with status" in result.stderr
    assert not cluster.state_path.exists()
    assert not cluster.connection_file("client").exists()


# --- ssh ----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1:<free port> that accepts one throwaway key; yields the ssh
    command (with options) that reaches it."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.access(sshd_bin, os.X_OK), "sshd missing: scripts/setup.sh installs openssh-server"
    # Without systemd nobody creates sshd's privilege separation folder.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True, timeout=30)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nUseDNS no\n"
        # the key lives under /tmp, which is world-writable
        "StrictModes no\n")
    log = open(d / "sshd.log", "ab")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        herdtest.wait_until(lambda: proc.poll() is not None or accepts(port), 20, what="sshd")
        assert proc.poll() is None, (d / "sshd.log").read_text()
        yield (f"ssh -p {port} -i {d / 'client_key'} -o StrictHostKeyChecking=accept-new "
               f"-o UserKnownHostsFile={d / 'known_hosts'} -o ConnectTimeout=20")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_ssh_starts_python_engines_on_each_host(sshd, clusters):
    cluster = clusters()
    # Both names reach the same sshd: two hosts, one ssh call each.
    result = cluster.start("--launcher", "ssh", "--hosts", "127.0.0.1:2,localhost", "--ssh", sshd)
    assert "3 engines (ipengine, launcher ssh)" in result.stdout
    state = cluster.state()
    assert [(s["kind"], s["host"]) for s in state["engine_sets"]] == \
        [("ssh", "127.0.0.1"), ("ssh", "127.0.0.1"), ("ssh", "localhost")]
    assert state["ssh_command"][-3:] == ["-T", "-o", "BatchMode=yes"]
    rc = cluster.client()
    try:
        assert len(set(rc[:].apply_sync(ipp.interactive(rank_and_pid)))) == 3
    finally:
        rc.close()
    engines = [p for p in processes_mentioning(str(cluster.profile_dir)) if "ipyparallel.engine" in p.cmdline()]
    assert sorted(p.pid for p in engines) == sorted(s["pid"] for s in state["engine_sets"])
    began = time.monotonic()
    result = cluster.stop()
    assert result.returncode == 0, result.stderr
    assert "3 engines stopped" in result.stdout and "SIGKILL" not in result.stdout
    assert not still_running(engines)
    assert time.monotonic() - began < 30


def test_ssh_engine_that_exits_fails_the_start(sshd, clusters):
    cluster = clusters()
    result = cluster.run("start", "--launcher", "ssh", "--hosts", "127.0.0.1", "--ssh", sshd,
                         "--python", "/bin/false", "--timeout=40")
    assert result.returncode == 1
    assert "on 127.0.0.1 ended" in result.stderr
    assert not cluster.state_path.exists()


def test_bad_host_list_is_refused_before_anything_starts(clusters):
    cluster = clusters()
    for hosts, message in (("", "needs --hosts"), ("a:3,b:1", "-n 5 does not fit")):
        result = cluster.run("start", "--launcher", "ssh", "--hosts", hosts, "-n", "5")
        assert result.returncode == 2
        assert message in result.stderr
    assert not (cluster.profile_dir / "log").exists()  # not even herdd's log


def test_unreachable_ssh_host_fails_the_start(clusters):
    cluster = clusters()
    closed = free_port()
    result = cluster.run("start", "--launcher", "ssh", "--hosts", "127.0.0.1:2",
                         "--ssh", f"ssh -p {closed} -o ConnectTimeout=5", "--timeout=30")
    assert result.returncode == 1
    assert "ssh 127.0.0.1:" in result.stderr and "Connection refused" in result.stderr
    assert not cluster.state_path.exists()
    assert not cluster.connection_file("client").exists()
