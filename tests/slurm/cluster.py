"""A one-node Slurm cluster for the tests in tests/slurm, and the small demo job they run on it.

`with Cluster() as cluster:` writes slurm.conf from slurm.conf.in into a temporary directory
(free ports, state, spool and logs there), starts the cluster's own munged (its own key and
socket: the machine's munged, running or not, is left alone), slurmctld and slurmd in the
foreground as children of the test, and waits until the node is idle. Leaving the block cancels
every job, stops the daemons and kills what is left of the jobs' processes (found by the
cluster's SLURM_CONF in their environment), also when the test failed; a failed test prints the
daemons' log tails first.

skip_unless_runnable() exits 77 (CTest's SKIP_RETURN_CODE), saying why, without the Slurm and
munge packages (launch/install-deps installs them), without root, or with fewer than 2 CPUs.
"""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import mpi_jobs  # noqa: E402
from checks import TIME_SCALE, check  # noqa: E402

SRC = os.environ["DNPO_SOURCE_DIR"]
BIN = os.environ["DNPO_BIN"]
SKIPPED = 77
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "salloc", "srun", "scancel",
            "scontrol", "squeue")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED")  # a job's final states
START_S = 60 * TIME_SCALE  # daemons up and the node idle (about a second when idle)
STOP_S = 30 * TIME_SCALE  # cancelled jobs gone


def skip(why):
    print(f"SKIP: {why}", flush=True)
    sys.exit(SKIPPED)


def program(name):
    """The path of a program, looking in the sbin folders too (not on every PATH)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def skip_unless_runnable():
    missing = [p for p in PROGRAMS if program(p) is None]
    if missing:
        skip(f"{', '.join(missing)} not found: the Slurm tests need the slurm-wlm and munge "
             "packages (launch/install-deps installs them)")
    if os.geteuid() != 0:
        skip("the test cluster runs slurmctld and slurmd as root (SlurmUser=root): run as root")
    if len(os.sched_getaffinity(0)) < 2:
        skip("the jobs run 2 tasks of one CPU each: this machine has fewer than 2 CPUs")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """preexec_fn: the daemon gets SIGKILL when the test process dies (prctl PR_SET_PDEATHSIG),
    so a test killed by CTest's timeout leaves no daemon behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})\n"


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dnpo-slurm-")
        os.chmod(self.dir, 0o755)  # munged wants every folder above its socket searchable
        self.conf = f"{self.dir}/slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.daemons = {}
        # Clients see this cluster only: no SLURM_* of an enclosing job, and Open MPI as root.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env = dict(base, SLURM_CONF=self.conf, OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                        PATH=base.get("PATH", "") + ":/usr/sbin:/sbin")

    # --- start and stop ---

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop(failed=True)
            raise
        return self

    def __exit__(self, kind, value, traceback):
        self.stop(failed=kind is not None)
        return False

    def start(self):
        for sub in ("munge", "state", "spool", "log"):
            os.makedirs(f"{self.dir}/{sub}")
        os.chmod(f"{self.dir}/munge", 0o755)
        values = {"HOST": self.host, "DIR": self.dir, "CTLD_PORT": free_port(),
                  "SLURMD_PORT": free_port(), "CPUS": len(os.sched_getaffinity(0))}
        with open(f"{HERE}/slurm.conf.in") as f:
            text = f.read()
        for key, value in values.items():
            text = text.replace(f"@{key}@", str(value))
        left = re.findall(r"@[A-Z_]+@", text)
        check(not left, f"slurm.conf.in: {left} not filled in")
        with open(self.conf, "w") as f:
            f.write(text)
        self.start_munged()
        self.daemons["slurmctld"] = self.spawn("slurmctld", "-D", "-f", self.conf)
        self.daemons["slurmd"] = self.spawn("slurmd", "-D", "-f", self.conf)
        deadline = time.monotonic() + START_S
        state = ""
        while True:
            for name, proc in self.daemons.items():
                check(proc.poll() is None, lambda: f"{name} exited {proc.returncode} at start\n"
                      + self.logs())
            done = self.run("scontrol", "show", "node", self.host, "-o", check_exit=False)
            found = re.search(r"\bState=(\S+)", done.stdout)
            state = found.group(1) if found else done.stdout.strip()
            if state == "IDLE":
                break
            check(time.monotonic() < deadline, lambda: f"the node is {state!r}, not IDLE, "
                  f"{START_S:.0f} s after start\n" + self.logs())
            time.sleep(0.2)
        print(f"cluster: slurmctld and slurmd up, node {self.host} idle ({self.dir})", flush=True)

    def start_munged(self):
        key = f"{self.dir}/munge/munge.key"
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(os.urandom(128))
        self.socket = f"{self.dir}/munge/munge.socket"
        self.daemons["munged"] = self.spawn(
            "munged", "-F", f"--socket={self.socket}", f"--key-file={key}",
            f"--pid-file={self.dir}/munge/munged.pid", f"--log-file={self.dir}/log/munged.log",
            f"--seed-file={self.dir}/munge/munged.seed")
        deadline = time.monotonic() + START_S
        while self.run("munge", "-n", "-S", self.socket, check_exit=False).returncode != 0:
            check(self.daemons["munged"].poll() is None,
                  lambda: "munged exited at start\n" + tail(f"{self.dir}/log/munged.log"))
            check(time.monotonic() < deadline, lambda: "munged does not answer\n"
                  + tail(f"{self.dir}/log/munged.log"))
            time.sleep(0.1)

    def spawn(self, name, *args):
        out = open(f"{self.dir}/log/{name}.out", "w")
        return subprocess.Popen([program(name), *args], env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def stop(self, failed):
        if failed:
            print(self.logs(), flush=True)
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if name == "slurmctld":
                self.kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cancel_all(self):
        """Cancels every job and waits (bounded) until none is left, running or completing."""
        jobs = self.run("squeue", "-h", "-o", "%i", check_exit=False).stdout.split()
        if jobs:
            self.run("scancel", *jobs, check_exit=False)
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check_exit=False).stdout.split():
                return
            time.sleep(0.2)
        print(f"cluster: jobs still listed {STOP_S:.0f} s after scancel", flush=True)

    def job_processes(self):
        """Processes of this cluster other than its daemons and this test: slurmstepd, the
        batch scripts, the tasks, salloc and what it started (their SLURM_CONF is ours)."""
        mine = {os.getpid()} | {p.pid for p in self.daemons.values()}
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def kill_leftovers(self):
        for pid in self.job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"cluster: killed leftover process {pid}", flush=True)
            except ProcessLookupError:
                pass

    def logs(self):
        return "".join(f"--- {name} (last lines) ---\n{tail(f'{self.dir}/log/{name}.log')}"
                       for name in ("slurmctld", "slurmd", "munged"))

    # --- clients ---

    def run(self, *cmd, check_exit=True, timeout=60, cwd=None):
        done = subprocess.run(list(cmd), env=self.env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout * TIME_SCALE)
        if check_exit:
            check(done.returncode == 0, lambda: f"{' '.join(cmd)}: exit {done.returncode}\n"
                  f"{done.stdout[-3000:]}")
        return done

    def sbatch(self, *args, env=None):
        """Submits from the source tree's root (launch/slurm.sbatch runs launch/run from the
        submit directory); returns the job id."""
        cmd = ["sbatch", "--parsable", *args]
        done = subprocess.run(cmd, env=dict(self.env, **(env or {})), cwd=SRC,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60 * TIME_SCALE)
        check(done.returncode == 0 and done.stdout.strip().split(";")[0].isdigit(),
              lambda: f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, Reason, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def job_ended(self, job_id):
        return self.job(job_id).get("JobState") in ENDED

    def wait_job(self, job_id, timeout):
        """Polls the job until it has ended (ENDED); returns its fields."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in ENDED:
                return job
            check(time.monotonic() < deadline,
                  lambda: f"job {job_id} is still {job.get('JobState')} after {timeout:.0f} s")
            time.sleep(0.25)


# --- the job: configs/demo.toml with a small world (about 15 s at np 2 on 2 idle cores) ---

BOUND_S = 300 * TIME_SCALE  # generous functional bound on one run of it
# launch/slurm.sbatch's #SBATCH lines are for GPU nodes: these override them for this one node.
CPU_NODE = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
            "--time=10"]
SFT_STEPS = 38  # 600 tasks × 2 epochs in batches of 32


def demo_sets(work, name, *extra):
    """The --set overrides of the small demo job: SFT (38 steps), SPIN iteration 0 and one DNPO
    iteration on 64 prompts, the rule judge, one thread per rank (so the result does not depend
    on the machine's cores), writing into work/runs/name."""
    sets = [f'run.out_dir="{work}/runs"', f'run.name="{name}"', "run.threads=1",
            "run.log_every=1", f'data.train_file="{work}/{name}_data/train.jsonl"',
            f'data.eval_file="{work}/{name}_data/eval.jsonl"', "demo.train_size=600",
            "demo.eval_size=40", "train.epochs=2", "train.batch_size=32",
            "train.micro_batch_size=16", "selfplay.prompts=64", "selfplay.iterations=1",
            "sample.batch_size=32", "npo.chunk_positions=16", "checkpoint.every_minutes=0",
            *extra]
    return [a for s in sets for a in ("--set", s)]


def run_reference(work, name, *extra):
    """The uninterrupted job under mpirun -np 2, outside Slurm: what the Slurm runs must equal."""
    start = time.monotonic()
    mpi_jobs.run(["mpirun", "-np", "2", "--oversubscribe", f"{BIN}/dnpo_dist", "--config",
                  f"{SRC}/configs/demo.toml", *demo_sets(work, name, *extra)],
                 f"{name} (mpirun -np 2)", BOUND_S)
    print(f"{name}: the uninterrupted job under mpirun -np 2 took {time.monotonic() - start:.0f} s",
          flush=True)


def sft_steps_logged(work, name):
    try:
        with open(f"{work}/runs/{name}/metrics.jsonl") as f:
            return sum(1 for line in f if '"kind":"sft"' in line.replace(" ", ""))
    except FileNotFoundError:
        return 0


def wait_for_sft_steps(work, name, steps, ended):
    """Waits until the job has logged `steps` SFT steps; ended() says whether it has ended (asked
    twice a second)."""
    deadline = time.monotonic() + BOUND_S
    asked = time.monotonic()
    while sft_steps_logged(work, name) < steps:
        if time.monotonic() - asked > 0.5:
            check(not ended(), f"{name}: ended before SFT step {steps}")
            asked = time.monotonic()
        check(time.monotonic() < deadline, f"{name}: no SFT step {steps} in {BOUND_S:.0f} s")
        time.sleep(0.01)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()
