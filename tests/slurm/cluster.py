"""A single-node SLURM cluster on this machine, for `nox -s slurm`: writes a slurm.conf into a
folder of its own, starts munged (unless one runs), slurmctld and slurmd in the foreground as
children of this process, runs a command with SLURM_CONF set, and stops only the daemons it
started, also when the command fails.

    python tests/slurm/cluster.py FOLDER -- COMMAND ...

Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`) and root: slurmd runs
jobs as their users, which only root can do. Exits with the command's status, or 3 with the
reason when the cluster cannot start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")

CONF = """\
ClusterName=vaerepro
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={port}
SlurmdPort={port2}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
SlurmctldParameters=preempt_send_user_signal
KillWait=60
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    pass


def missing_reason() -> str | None:
    """Why this machine cannot start the cluster, or None."""
    missing = [name for name in NEEDED if shutil.which(name) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found: install Debian's slurm-wlm and munge "
            "(apt-get install slurm-wlm munge, as root)"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root (it starts jobs as their users): run as root"
    return None


def write_conf(folder: Path) -> Path:
    """slurm.conf for this host: one node of all its CPUs, one partition."""
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        CONF.format(
            host=socket.gethostname().split(".")[0],
            d=folder,
            cpus=os.cpu_count(),
            port=6817,
            port2=6818,
        )
    )
    return conf


def _wait_for(check, what: str, log: Path | None, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s\n{tail}")


def _ok(cmd: list[str], env: dict) -> bool:
    return subprocess.run(cmd, env=env, capture_output=True).returncode == 0


def _start_munged(folder: Path, started: list) -> None:
    """munged on its default socket, unless one already answers there."""
    if _ok(["munge", "-n"], dict(os.environ)):
        return
    if not MUNGE_KEY.exists():
        subprocess.run(["mungekey", "-c", "-k", str(MUNGE_KEY)], check=True)
        shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    log = folder / "munged.log"
    cmd = [
        "munged",
        "-F",
        f"--log-file={log}",
        f"--pid-file={MUNGE_SOCKET.parent / 'vaerepro.pid'}",
    ]
    started.append(("munged", _daemon(["runuser", "-u", "munge", "--", *cmd], folder, "munged")))
    _wait_for(lambda: _ok(["munge", "-n"], dict(os.environ)), "munged", log)


def _daemon(cmd: list[str], folder: Path, name: str, env: dict | None = None):
    """A daemon in the foreground, a child of this process; its output in FOLDER/NAME.out."""
    with open(folder / f"{name}.out", "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def cluster(folder: Path):
    """Start munged, slurmctld and slurmd; yield the environment naming this slurm.conf;
    stop what was started (by its own process), whatever happens."""
    folder = folder.absolute()
    conf = write_conf(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[tuple[str, subprocess.Popen]] = []
    try:
        _start_munged(folder, started)
        for daemon in ("slurmctld", "slurmd"):
            started.append((daemon, _daemon([daemon, "-D", "-f", str(conf)], folder, daemon, env)))
        _wait_for(lambda: _ok(["scontrol", "ping"], env), "slurmctld", folder / "slurmctld.log")
        _wait_for(
            lambda: (
                "idle"
                in subprocess.run(
                    ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True
                ).stdout
            ),
            "slurmd (node idle)",
            folder / "slurmd.log",
        )
        print(f"cluster up: SLURM_CONF={conf}", file=sys.stderr, flush=True)
        yield env
    finally:
        for name, proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"stopped {name} (pid {proc.pid})", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    if reason := missing_reason():
        print(f"cannot start a SLURM cluster: {reason}", file=sys.stderr)
        return 3
    try:
        with cluster(Path(argv[0])) as env:
            return subprocess.run(argv[2:], env=env).returncode
    except ClusterError as err:
        print(f"cannot start a SLURM cluster: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
