"""Helpers the integration tests share for starting and interrupting mpirun jobs."""
import os
import subprocess

from checks import TIME_SCALE, check  # noqa: F401 (TIME_SCALE: the scripts read it from here)


def environment(**extra):
    """os.environ plus what Open MPI needs to run as root (CI machines do), plus `extra`."""
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                **extra)


def run(cmd, what, timeout):
    """Runs cmd to the end; checks exit 0 (naming `what`); returns its output."""
    done = subprocess.run(cmd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    check(done.returncode == 0, f"{what}: exit {done.returncode}\n{done.stdout[-4000:]}")
    return done.stdout


def rank_pids(mpirun_pid):
    """The pids of mpirun's children: the ranks of the job on this machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == mpirun_pid:
            pids.append(int(entry))
    return pids


def ranks_among(pids):
    """{MPI rank: pid} of the MPI processes among `pids` (read from their environment)."""
    ranks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(var.split(b"=", 1)[1])] = pid
    return ranks


def dnpo_dist_environments():
    """(pid, environment as {bytes: bytes}) of every dnpo_dist process running on this machine."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "dnpo_dist":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        yield int(entry), env


def rank_pid(mpirun_pid, rank):
    """The pid of the process with that MPI rank among mpirun's children."""
    pid = ranks_among(rank_pids(mpirun_pid)).get(rank)
    if pid is None:
        raise AssertionError(f"no process of rank {rank} under mpirun {mpirun_pid}")
    return pid
