"""Several hosts on one machine for the tests: hosts.sh's network namespaces as a context manager,
commands and mpirun jobs on them, and a job whose output is read as it comes.

    with Hosts(2) as hosts:                     # node0, node1 at 10.77.0.1, .2 on mh0
        subprocess.run(hosts.mpirun(4, [dnpo_dist, ...]))   # mpirun on node0, 2 ranks a host
"""
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTS_SH = os.path.join(HERE, "hosts.sh")
SKIPPED = 77  # the exit code CTest reads as a skipped test (SKIP_RETURN_CODE)
INTERFACE = "mh0"  # each host's interface on the hosts' network


def skip_unless_possible():
    """Exits SKIPPED, printing why, where this machine cannot make network namespaces."""
    done = subprocess.run([HOSTS_SH, "check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode == SKIPPED:
        print(f"skipped: {done.stdout.strip()}")
        sys.exit(SKIPPED)
    if done.returncode != 0:
        raise RuntimeError(f"hosts.sh check: exit {done.returncode}: {done.stdout}")


class Hosts:
    """`count` hosts node0.. with `slots` MPI slots each; removed on exit, even after an error."""

    def __init__(self, count, slots=2):
        self.count = count
        self.slots = slots
        self.dir = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="dnpo-hosts.")
        try:
            subprocess.run([HOSTS_SH, "up", self.dir, str(self.count), str(self.slots)],
                           check=True, env=dict(os.environ, DNPO_HOSTS_OWNER=str(os.getpid())))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_):
        subprocess.run([HOSTS_SH, "down", self.dir], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def name(i):
        return f"node{i}"

    @staticmethod
    def address(i):
        return f"10.77.0.{i + 1}"

    def on(self, host, argv):
        """The command line that runs argv on `host`."""
        return [HOSTS_SH, "exec", self.dir, host, *argv]

    @property
    def launcher_args(self):
        """What mpirun needs to start ranks on the hosts (the arguments DIR/bin/mpirun adds)."""
        return (f"--hostfile {self.dir}/hostfile --mca plm_rsh_agent {self.dir}/agent "
                "--mca mpi_yield_when_idle 1")

    def mpirun(self, np_, argv):
        """mpirun -np np_ argv, started on node0 over all the hosts (`slots` ranks a host)."""
        return self.on(self.name(0), [f"{self.dir}/bin/mpirun", "-np", str(np_), *argv])

    def pids(self, host):
        """The processes running on `host`."""
        prefix = open(f"{self.dir}/prefix").read().strip()
        out = subprocess.run(["ip", "netns", "pids", f"{prefix}-{host}"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        return [int(p) for p in out.split()]

    def received_bytes(self, host):
        """Bytes `host` has received on its interface to the other hosts."""
        out = subprocess.run(self.on(host, ["cat", f"/sys/class/net/{INTERFACE}/statistics/"
                                            "rx_bytes"]), check=True, stdout=subprocess.PIPE,
                             text=True).stdout
        return int(out)


class Job:
    """A command whose output (stdout and stderr together) is read line by line as it comes,
    each line with the monotonic time it arrived."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []  # (time, line)
        self._queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put((time.monotonic(), line))
        self._queue.put(None)

    def wait_for(self, pattern, timeout):
        """Reads until a line matches `pattern` (returns (time, match)) or the output ends or
        `timeout` passes (returns None)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)  # stays ended for the next reader
                return None
            self.lines.append(item)
            found = regex.search(item[1])
            if found:
                return item[0], found

    def finish(self, timeout):
        """Waits for the end (killing the job after `timeout`); returns (exit code, output)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.wait_for(r"(?!)", 5)  # the rest of the output
        return self.proc.returncode, self.output()

    def output(self):
        return "".join(line for _, line in self.lines)
