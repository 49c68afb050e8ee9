"""`herd cluster start --launcher slurm`: real Python engines as the tasks of a Slurm
batch job. The module runs a one-node Slurm of its own (munged on a private socket,
slurmctld and slurmd in the foreground on free ports, state in a temporary folder; no
systemd, nothing under /etc changed) and stops it by PID at the end. scripts/setup.sh
installs slurm-wlm."""

import getpass
import os
import shutil
import socket
import subprocess

import psutil
import pytest

import herdtest
from cluster_helpers import clusters, still_running  # noqa: F401 (fixture)

import ipyparallel as ipp

pytestmark = pytest.mark.herd_only("herd cluster always starts herdd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d, user):
    return f"""ClusterName=herdtest
SlurmctldHost=localhost
SlurmUser={user}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d / 'munge' / 'socket'}
CredType=cred/munge
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'slurmctld.log'}
SlurmdLogFile={d / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
# more CPUs than the machine has, so that a job may have more tasks than cores
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Daemons:
    """Foreground daemons, each stopped by its PID (SIGTERM, bounded wait, SIGKILL)."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.procs = []

    def start(self, name, argv, env):
        log = open(self.log_dir / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop_all(self):
        for _, proc in reversed(self.procs):  # slurmd, then slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    herdtest.kill_group(proc.pid)
                    proc.wait(timeout=10)


def program(name):
    """A daemon's path (/usr/sbin may be missing from PATH)."""
    path = shutil.which(name) or f"/usr/sbin/{name}"
    assert os.access(path, os.X_OK), f"{name} missing: scripts/setup.sh installs slurm-wlm"
    return path


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    for tool in ("sbatch", "squeue", "scancel", "sinfo"):
        program(tool)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir()
    os.chmod(d, 0o711)  # munged wants its socket's folders searchable
    os.chmod(d / "munge", 0o711)
    (d / "munge" / "key").write_bytes(os.urandom(128))
    os.chmod(d / "munge" / "key", 0o600)
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d, getpass.getuser()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = Daemons(d)
    mp = pytest.MonkeyPatch()
    try:
        munge = d / "munge"
        daemons.start("munged", [program("munged"), "--foreground", "--force", f"--socket={munge / 'socket'}",
                                 f"--key-file={munge / 'key'}", f"--pid-file={munge / 'pid'}",
                                 f"--log-file={munge / 'log'}", f"--seed-file={munge / 'seed'}"], env)
        herdtest.wait_until(lambda: (munge / "socket").exists(), 20, what="munged's socket")
        daemons.start("slurmctld", [program("slurmctld"), "-D", "-c", "-f", str(conf)], env)
        daemons.start("slurmd", [program("slurmd"), "-D", "-f", str(conf), "-N", "localhost"], env)

        def node_idle():
            for name, proc in daemons.procs:
                assert proc.poll() is None, f"{name} exited:\n{herdtest.tail(d / f'{name}.out')}"
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                 timeout=10).stdout
            return out.strip() == "idle"

        herdtest.wait_until(node_idle, 30, interval=0.2, what="the Slurm node to be idle")
        mp.setenv("SLURM_CONF", str(conf))  # herd cluster and its sbatch/squeue/scancel
        yield env
    finally:
        mp.undo()
        daemons.stop_all()


def job_info():
    import os
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_PROCID")


def test_slurm_job_runs_python_engines(slurm, clusters):
    cluster = clusters()
    result = cluster.start("-n", "3", "--launcher", "slurm")
    assert "3 engines (ipengine, launcher slurm)" in result.stdout
    [job] = cluster.state()["engine_sets"]
    assert job["kind"] == "slurm" and job["job_id"].isdigit()
    rc = cluster.client()
    try:
        answers = rc[:].apply_sync(ipp.interactive(job_info))
    finally:
        rc.close()
    assert {job_id for job_id, _ in answers} == {job["job_id"]}
    assert sorted(rank for _, rank in answers) == ["0", "1", "2"]
    engines = [p for p in psutil.process_iter()  # not srun, whose arguments are the same
               if p.cmdline()[1:3] == ["-m", "ipyparallel.engine"] and str(cluster.profile_dir) in p.cmdline()]
    assert len(engines) == 3
    result = cluster.stop()
    assert result.returncode == 0, result.stderr
    assert "3 engines stopped" in result.stdout
    squeue = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%T"], env=slurm,
                            capture_output=True, text=True, timeout=10)
    assert squeue.stdout.strip() in ("", "CANCELLED", "COMPLETED")
    herdtest.wait_until(lambda: not still_running(engines), 10, what="the job's engines to end")


def test_slurm_job_that_fails_fails_the_start(slurm, clusters):
    cluster = clusters()
    result = cluster.run("start", "-n", "2", "--launcher", "slurm", "--python", "/bin/false", "--timeout=40")
    assert result.returncode == 1
    assert "Slurm job" in result.stderr and "ended" in result.stderr
    assert not cluster.state_path.exists()
    assert not cluster.connection_file("client").exists()
