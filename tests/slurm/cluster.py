"""A real single-node Slurm on this machine for the tests: munged, slurmctld and slurmd on localhost,
configured in a temporary directory (nothing under /etc is written) and stopped afterwards.

    slurm = LocalSlurm(tmp_dir)      # ensure_installed() first: apt-get install slurm-wlm munge
    slurm.start()                    # waits until the node is idle
    job = slurm.sbatch(["slurm/cpu_example.sbatch", "trainer.steps=2"], env=...)
    slurm.wait_for(job, {"COMPLETED"}, timeout=900)
    slurm.stop()

The daemons run in the foreground as children of the test process (root), with their own MUNGE
socket and key, their own ports, and state in the temporary directory; the clients find the cluster
through ``SLURM_CONF`` (``slurm.env()``). Settings that matter for the tests: ``KillWait=120`` (a job's
processes get that long between SIGTERM and SIGKILL: time to finish a step and save a checkpoint),
``cred_expire=10`` (a requeued job may start again 10 s after it ended, not Slurm's default 120 s),
``sched_interval=2`` (the scheduler looks at pending jobs every 2 s, not 60: a requeued job starts as
soon as it is eligible), ``MinJobAge=3600`` (finished jobs stay visible to ``scontrol show job``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
INSTALL_ENV = "NEMO_RESRL_APT_INSTALL"  # 0: never apt-get install (the tests skip when Slurm is missing)
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])


class Unavailable(RuntimeError):
    """Not installed and cannot be installed here (or would not start); the message says why."""


def which(name: str) -> str | None:
    return shutil.which(name, path=_PATH)


def apt_install(packages: Sequence[str], binaries: Sequence[str], timeout_s: float = 900.0) -> None:
    """Install Debian ``packages`` with apt-get (as root) unless every one of ``binaries`` is on the
    PATH; raises ``Unavailable`` with the reason when that is not possible."""
    missing = [b for b in binaries if which(b) is None]
    if not missing:
        return
    why = f"{' '.join(packages)} not installed (missing: {', '.join(missing)})"
    if os.environ.get(INSTALL_ENV, "1") == "0":
        raise Unavailable(f"{why} and {INSTALL_ENV}=0")
    if os.geteuid() != 0:
        raise Unavailable(f"{why}; installing needs root: apt-get install {' '.join(packages)}")
    apt = which("apt-get")
    if apt is None:
        raise Unavailable(f"{why} and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": _PATH}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    deadline = time.monotonic() + timeout_s
    out = ""
    for cmd in (install, [apt, "update", "-q"], install):  # the package lists may be missing or stale
        left = deadline - time.monotonic()
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(left, 1.0))
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{why}; `{' '.join(cmd)}` did not finish in {timeout_s:.0f} s") from None
        out = (res.stdout + res.stderr)[-2000:]
        if cmd is install and res.returncode == 0 and all(which(b) for b in binaries):
            return
    raise Unavailable(f"{why}; `apt-get install {' '.join(packages)}` failed:\n{out}")


def ensure_installed(timeout_s: float = 900.0) -> None:
    """Debian's slurm-wlm and munge (see ``apt_install``)."""
    apt_install(PACKAGES, BINARIES, timeout_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class LocalSlurm:
    """munged + slurmctld + slurmd for one node (this machine), all state under ``root``."""

    def __init__(self, root: str | os.PathLike, cpus: int | None = None):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ set-up
    def env(self, **extra: str) -> dict[str, str]:
        """The environment for the Slurm clients (and what a submitted job inherits)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _PATH, **extra}

    def _write_config(self) -> None:
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=nemo-resrl-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket},cred_expire=10",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/builtin",
                    "SchedulerParameters=sched_interval=2",  # a requeued job starts once eligible
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "JobRequeue=1",
                    "KillWait=120",
                    "MinJobAge=3600",
                    "ReturnToService=2",
                    "SlurmdTimeout=300",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                    f"RealMemory={int(_mem_mb() * 0.9)} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        log.close()

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise Unavailable(f"{name} exited with status {p.returncode}:\n{self.logs(name)}")

    def start(self, timeout_s: float = 90.0) -> None:
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        deadline = time.monotonic() + timeout_s
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise Unavailable(f"munged did not create its socket:\n{self.logs('munged')}")
            time.sleep(0.1)
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            res = self._client(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            state = res.stdout.strip()
            if res.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise Unavailable(f"the node did not become idle in {timeout_s:.0f} s (state {state!r})")

    def logs(self, name: str, chars: int = 3000) -> str:
        text = ""
        for p in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if p.exists():
                text += p.read_text(errors="replace")
        return text[-chars:]

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._client(["scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}"], check=False)  # ours only
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._client(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)

    # ------------------------------------------------------------------ clients
    def _client(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [which(cmd[0]) or cmd[0], *cmd[1:]],
            env=kw.pop("env", self.env()),
            capture_output=True,
            text=True,
            timeout=60,
            **kw,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stdout}{res.stderr}")
        return res

    def sbatch(
        self, args: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None
    ) -> str:
        """Submit; returns the job id."""
        res = self._client(["sbatch", "--parsable", *args], env=env or self.env(), cwd=cwd)
        return res.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} once it is forgotten."""
        res = self._client(["scontrol", "show", "job", "-o", job_id], check=False)
        if res.returncode != 0:
            return {}
        out = {}
        for tok in res.stdout.split():
            k, sep, v = tok.partition("=")
            if sep:
                out[k] = v
        return out

    def scontrol(self, *args: str) -> str:
        return self._client(["scontrol", *args]).stdout

    def scancel(self, *args: str, check: bool = True) -> None:
        self._client(["scancel", *args], check=check)

    def wait_for(
        self, job_id: str, states: set[str], timeout_s: float, poll_s: float = 1.0
    ) -> dict[str, str]:
        """Wait until the job is in one of ``states``; raises TimeoutError (with the logs) otherwise."""
        deadline = time.monotonic() + timeout_s
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll_s)
        raise TimeoutError(
            f"job {job_id} not in {sorted(states)} after {timeout_s:.0f} s: {info}\n"
            f"slurmctld:\n{self.logs('slurmctld')}\nslurmd:\n{self.logs('slurmd')}"
        )
