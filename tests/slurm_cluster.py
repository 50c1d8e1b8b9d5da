"""A throw-away two-node SLURM cluster on this machine, for the tests.

One ``slurmctld`` and two ``slurmd`` daemons (nodes ``n1`` and ``n2``, both on 127.0.0.1 on
different ports) run as root with no munge and no systemd; their configuration, state, spool
and logs live under a temporary directory. The daemons are stopped by pid when the cluster closes.

Needs the Debian packages ``slurmctld slurmd slurm-client`` (SLURM 22.05). When they are missing
and we are root with apt, :func:`ensure_slurm_installed` installs them; otherwise
:func:`slurm_unavailable_reason` says why the tests must skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun")
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client")


def _missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_slurm_installed() -> None:
    """Install SLURM with apt when it is missing and we are root (CI containers); else do nothing."""
    if not _missing_binaries() or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], env=env, check=False,
                   capture_output=True, timeout=900)


def slurm_unavailable_reason() -> str | None:
    """Why a local SLURM cluster cannot run here, or None when it can."""
    missing = _missing_binaries()
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}); "
                f"install it with: apt-get install -y {' '.join(APT_PACKAGES)}")
    if os.geteuid() != 0:
        return "the local SLURM test cluster runs slurmd as root (no munge); run the SLURM tests as root"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    """Handle on a running local cluster: its config file and the environment to call it with."""

    root: Path
    conf: Path
    cpus_per_node: int
    pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for sbatch/squeue/scontrol calls (and inherited by jobs)."""
        # Jobs start clean: no SLURM variables of an outer allocation, and no wandb service handle
        # of the test process (a job attached to it finds its resumed run id "in use").
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_SERVICE"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, check=check, capture_output=True, text=True,
                              timeout=timeout)

    def job_state(self, job_id: int) -> str:
        out = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        for tok in out.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "UNKNOWN"

    def job_field(self, job_id: int, name: str) -> str | None:
        out = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        for tok in out.split():
            if tok.startswith(name + "="):
                return tok.split("=", 1)[1]
        return None

    def wait_for_state(self, job_id: int, states: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = self.job_state(job_id)
        while state not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {state}, not {sorted(states)} after {timeout:.0f} s;"
                                   f" logs under {self.root}")
            time.sleep(0.5)
            state = self.job_state(job_id)
        return state

    def start_requeued_now(self, job_id: int, timeout: float = 120) -> None:
        """Start a requeued (PENDING) job now, once every node has torn its last run down and the
        requeue's credential revocation is behind. SLURM delays a requeued job's start for this: slurmd
        revokes the old run's credential by time, to the second, so a launch within that second is refused
        ("Job N already killed, do not launch batch job"; "Job credential revoked") and the job fails."""
        time.sleep(2.0)  # past the second of the requeue: the new credential is issued after the revocation
        deadline = time.monotonic() + timeout
        while True:
            states = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
            if states and all(state == "idle" for state in states):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes still {states} after {timeout:.0f} s; logs under {self.root}")
            time.sleep(0.5)
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    def stop(self) -> None:
        """SIGTERM the daemons we started (by pid), then SIGKILL whatever is left."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG) != (0, 0):
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        self.pids.clear()


def write_conf(root: Path, cpus_per_node: int = 2, real_memory_mb: int = 4000, task_plugin: str = "task/none") -> Path:
    """slurm.conf for two simulated nodes on 127.0.0.1; everything lives under ``root``. ``task/affinity``
    binds each task to the CPUs srun gives it, as most clusters do (both nodes share this machine's CPUs)."""
    ctld_port, p1, p2 = _free_ports(3)
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool/n1", "spool/n2", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a two-node test cluster on one machine.
ClusterName=resnetlit
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin={task_plugin}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname={host} Port={p1} CPUs={cpus_per_node} RealMemory={real_memory_mb} State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname={host} Port={p2} CPUs={cpus_per_node} RealMemory={real_memory_mb} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")  # noqa: E501 (slurm.conf lines)
    return conf


def start_cluster(root: Path, cpus_per_node: int = 2, timeout: float = 60,
                  task_plugin: str = "task/none") -> SlurmCluster:
    """Start slurmctld and two slurmd; return once sinfo shows both nodes idle."""
    conf = write_conf(root, cpus_per_node, task_plugin=task_plugin)
    cluster = SlurmCluster(root=root, conf=conf, cpus_per_node=cpus_per_node)
    env = cluster.env
    logs = root / "log"
    try:
        # -D: stay in the foreground so the pid we hold is the daemon's; -i: ignore old state.
        cmds = [[_sbin("slurmctld"), "-D", "-i", "-f", str(conf)]]
        cmds += [[_sbin("slurmd"), "-D", "-N", n, "-f", str(conf)] for n in ("n1", "n2")]
        for i, cmd in enumerate(cmds):
            out = open(logs / f"daemon{i}.out", "w")
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            cluster.pids.append(proc.pid)
            if i == 0:
                time.sleep(1.0)  # let slurmctld bind before the slurmd register
        deadline = time.monotonic() + timeout
        while True:
            res = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
            if states.get("n1") == "idle" and states.get("n2") == "idle":
                return cluster
            if time.monotonic() > deadline:
                tail = "".join((logs / f).read_text()[-2000:] for f in sorted(os.listdir(logs)))
                raise RuntimeError(f"SLURM nodes not idle after {timeout:.0f} s (sinfo: {states or res.stderr!r});"
                                   f" logs:\n{tail}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
