"""Running a test probe as its own process, alone or under torchrun: the one place the command line is
built (``--standalone``: torchrun picks a free rendezvous port itself, so concurrent jobs cannot race).

    res = run_module("tests.models.actor_probe", "--work", str(work), nproc=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]

The ``torchrun`` fixture of ``tests/conftest.py`` is this function.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_command(module: str, *args: str, nproc: int = 1) -> list[str]:
    """``python -m module args`` for one process, under ``torch.distributed.run`` for more."""
    if nproc == 1:
        return [sys.executable, "-m", module, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, "-m", module, *args]


def run_module(
    module: str,
    *args: str,
    nproc: int = 1,
    timeout: float = 900,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    gpu: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``module`` from the repository root and wait. With ``log``, output goes to that file and the
    process runs in its own session, whose leftovers are killed afterwards (a SIGKILLed trainer orphans
    the manager process that megatron's checkpoint saving starts); the log's text is returned as stdout
    (and its tail as stderr). ``env``: the environment (default: this process's). ``gpu``: let the probe see
    the GPUs; by default it sees none, so the CPU tests stay CPU tests on a GPU machine (the ``gpu``-marked
    tests run the probes on CUDA)."""
    cmd = module_command(module, *map(str, args), nproc=nproc)
    env = dict(os.environ if env is None else env)
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if log is None:
        return _run_group(cmd, env, timeout)
    from tests.session import run_in_own_session

    rc, text = run_in_own_session(cmd, log, timeout=timeout, env=env)
    return subprocess.CompletedProcess(cmd, rc, stdout=text, stderr=text[-4000:])


def _run_group(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, timeout=timeout)``, except that a timeout (or an interrupt)
    kills the whole process group: torchrun's workers would otherwise outlive their launcher and keep
    their cores (measured: two hung workers still running half an hour after their test failed)."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
