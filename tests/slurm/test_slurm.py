"""slurm/ under a real single-node Slurm (the ``slurm`` fixture, conftest.py): the CPU example job, and
jobs that are stopped (SIGUSR1 to the batch shell as at the time limit, SIGUSR1 to one rank, SIGTERM
from ``scontrol requeue`` as at preemption), requeued and resumed, against uninterrupted runs.

    .venv/bin/python -m pytest tests/slurm -v     # about 8 minutes on 2 CPU cores; -m "not slow" skips

The preemption tests run ``tests/training/run_probe.py`` (tiny Qwen3) through ``tests/slurm/probe.sbatch``,
which launches it the way the real scripts do (slurm/common.sh, slurm/task.sh).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from nemo_resrl.runs.checkpoints import CheckpointManager
from tests.models.tiny_hf import make_tiny

ROOT = Path(__file__).resolve().parents[2]
PROBE = str(ROOT / "tests" / "slurm" / "probe.sbatch")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
PREEMPTED = re.compile(r"preempted at step (\d+) \(([^)]+)\), checkpoint saved: (\S+)")


def _env(slurm, **extra: str) -> dict[str, str]:
    return slurm.env(NEMO_RESRL_ROOT=str(ROOT), PYTHON=sys.executable, **extra)


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _diagnose(slurm, job: str, run_dir: Path, out: Path | None = None) -> str:
    text = f"job {job}: {slurm.job(job)}\n"
    if out is not None and out.exists():
        text += f"--- {out.name}\n{out.read_text()[-3000:]}\n"
    for log in sorted(run_dir.glob("logs/attempt*/*.log")):
        text += f"--- {log.relative_to(run_dir)}\n{log.read_text(errors='replace')[-3000:]}\n"
    return text


def _wait_for_steps(slurm, job: str, run_dir: Path, n: int, restarts: int, timeout_s: float = 600) -> None:
    """Wait until attempt ``restarts`` of the job runs and metrics.jsonl has ``n`` steps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = slurm.job(job)
        if info.get("JobState") in ENDED:
            raise AssertionError(f"job ended before {n} steps\n{_diagnose(slurm, job, run_dir)}")
        if (
            info.get("JobState") == "RUNNING"
            and int(info.get("Restarts", 0)) == restarts
            and len(_metrics(run_dir)) >= n
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} steps in {timeout_s:.0f} s\n{_diagnose(slurm, job, run_dir)}")


def _wait_done(slurm, job: str, run_dir: Path, out: Path, timeout_s: float = 900) -> dict[str, str]:
    info = slurm.wait_for(job, ENDED, timeout_s)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _diagnose(slurm, job, run_dir, out)
    return info


def _preempted(log: Path) -> tuple[int, str]:
    found = PREEMPTED.findall(log.read_text(errors="replace"))
    assert len(found) == 1, log.read_text(errors="replace")[-3000:]
    step, reason, ckpt = found[0]
    assert Path(ckpt).name == f"step_{int(step):06d}"
    return int(step), reason


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [int(m["step"]) for m in a] == [int(m["step"]) for m in b]
    for x, y in zip(a, b):
        same = {k: v for k, v in x.items() if not k.startswith("time/")}
        assert same == {k: y.get(k) for k in same}, int(x["step"])
    assert len({m["reward/mean"] for m in a}) > 1  # the metrics compared are not constant


@pytest.mark.slow
def test_cpu_example_runs_the_embedded_default_and_writes_checkpoints_and_metrics(slurm, tmp_path):
    overrides = [
        "trainer.steps=2",
        "trainer.prompts_per_step=2",
        "rollout.sampling.n=4",
        "rollout.sampling.max_tokens=32",
        "trainer.eval_prompts=4",  # when the default evaluates (trainer.eval_every), at the last step
        "checkpoint.every=1",
    ]
    env = _env(slurm, OUTPUT_ROOT=str(tmp_path / "runs"))
    args = [f"--chdir={tmp_path}", f"--cpus-per-task={min(2, slurm.cpus)}"]
    job = slurm.sbatch([*args, str(ROOT / "slurm" / "cpu_example.sbatch"), *overrides], env=env)
    run_dir = tmp_path / "runs" / f"resrl-cpu-{job}"
    out = tmp_path / f"slurm-resrl-cpu-{job}.out"
    try:
        info = _wait_done(slurm, job, run_dir, out, timeout_s=1500)
    finally:
        slurm.scancel(job, check=False)
    assert info["Restarts"] == "0"
    assert "training exited with status 0" in out.read_text()
    metrics = _metrics(run_dir)
    assert [int(m["step"]) for m in metrics] == [0, 1]
    for m in metrics:
        assert -1.0 <= m["reward/mean"] <= 1.0 and m["response/length_mean"] > 0
    assert [s for s, _ in CheckpointManager(run_dir / "checkpoints").complete()] == [1, 2]
    log = (run_dir / "logs" / "attempt0" / "rank0.log").read_text()
    assert "training curves:" in log and "preempted at step" not in log
    assert (run_dir / "plots" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "tensorboard").is_dir() and (run_dir / "data_stats.json").is_file()
    assert not (run_dir / "preempted.json").exists()


@pytest.mark.slow
def test_stopped_and_preempted_job_resumes_without_losing_a_step(slurm, tmp_path):
    """One job stopped twice: SIGUSR1 to the batch shell (what ``--signal=B:USR1@T`` sends before the
    time limit: the job requeues itself), then ``scontrol requeue`` (SIGTERM to every process, as at
    preemption: Slurm requeues it). Checkpoints only at the end (checkpoint.every=100), so each resume
    can only start where the stop saved. It ends as the uninterrupted run does."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    # 16 steps of about 1 s: on a loaded 2-core machine the first stop once landed at step 7 of 8, leaving
    # no room for the second one
    steps = 16
    probe = dict(PROBE_WORK=str(tmp_path), PROBE_STEPS=str(steps), PROBE_CKPT_EVERY="100")
    cpus = f"--cpus-per-task={slurm.cpus}"
    whole_dir, run_dir = tmp_path / "whole", tmp_path / "stopped"
    whole_out, out = tmp_path / "whole.out", tmp_path / "stopped.out"
    whole = slurm.sbatch(
        [cpus, f"--output={whole_out}", PROBE], env=_env(slurm, RUN_DIR=str(whole_dir), **probe)
    )
    job = slurm.sbatch([cpus, f"--output={out}", PROBE], env=_env(slurm, RUN_DIR=str(run_dir), **probe))
    try:
        _wait_for_steps(slurm, job, run_dir, 2, restarts=0)
        slurm.scancel("--batch", "--signal=USR1", job)
        _wait_for_steps(slurm, job, run_dir, 1, restarts=1)
        k1, reason = _preempted(run_dir / "logs" / "attempt0" / "rank0.log")
        assert reason == "stop file" and 2 <= k1 < steps - 2, k1
        _wait_for_steps(slurm, job, run_dir, k1 + 1, restarts=1)
        slurm.scontrol("requeue", "Incomplete", job)
        info = _wait_done(slurm, job, run_dir, out)
        _wait_done(slurm, whole, whole_dir, whole_out)
    finally:
        slurm.scancel(job, whole, check=False)
    k2, reason = _preempted(run_dir / "logs" / "attempt1" / "rank0.log")
    assert reason == "SIGTERM" and k1 < k2 < steps, (k1, k2)
    assert info["Restarts"] == "2"
    logs = [(run_dir / "logs" / f"attempt{a}" / "rank0.log").read_text() for a in range(3)]
    assert f"(next step {k1})" in logs[1] and f"(next step {k2})" in logs[2]  # no finished step lost
    assert "PROBE OK" in logs[2] and "preempted at step" not in logs[2]
    text = out.read_text()
    assert "got SIGUSR1" in text and "got SIGTERM" in text
    assert (
        text.count(f"requeueing job {job}") == 1
    )  # by the script after SIGUSR1; Slurm requeued after SIGTERM
    assert not (run_dir / "preempted.json").exists()
    assert [s for s, _ in CheckpointManager(run_dir / "checkpoints").complete()] == [k2, steps]
    _same_metrics(_metrics(run_dir), _metrics(whole_dir))
    assert len(_metrics(run_dir)) == steps


@pytest.mark.slow
@pytest.mark.distributed
def test_signal_to_one_of_two_ranks_stops_both_after_the_same_step(slurm, tmp_path):
    """Two srun tasks (data parallel 2, slurm/task.sh gives the torch.distributed environment); SIGUSR1 to
    rank 1's process alone (as ``--signal=USR1@T`` without B: would send): both ranks stop after the same
    step, the job requeues itself, resumes and ends as an uninterrupted 2-rank run."""
    if slurm.cpus < 2:
        pytest.skip("needs 2 CPUs")
    make_tiny(tmp_path / "qwen3", "qwen3")
    # 8 steps of about 1 s: the signal (sent once 2 steps are logged, after an scontrol round trip) must
    # arrive well before the run ends (with 5 steps it once landed after the last one)
    steps = 8
    probe = dict(PROBE_WORK=str(tmp_path), PROBE_STEPS=str(steps), PROBE_CKPT_EVERY="100", NPROC_PER_NODE="2")
    args = ["--ntasks=2", "--cpus-per-task=1"]
    whole_dir, run_dir = tmp_path / "whole", tmp_path / "stopped"
    whole_out, out = tmp_path / "whole.out", tmp_path / "stopped.out"
    whole = slurm.sbatch(
        [*args, f"--output={whole_out}", PROBE], env=_env(slurm, RUN_DIR=str(whole_dir), **probe)
    )
    job = slurm.sbatch([*args, f"--output={out}", PROBE], env=_env(slurm, RUN_DIR=str(run_dir), **probe))
    try:
        _wait_for_steps(slurm, job, run_dir, 2, restarts=0)
        # PID STEPID LOCALID GLOBALID of the job's processes: rank 1 is global task 1 of step 0
        pids = [
            line.split()[0]
            for line in slurm.scontrol("listpids", job).splitlines()[1:]
            if line.split()[2:5] == ["0", "1", "1"]
        ]
        assert len(pids) == 1, slurm.scontrol("listpids", job)
        os.kill(int(pids[0]), signal.SIGUSR1)
        _wait_for_steps(slurm, job, run_dir, 1, restarts=1)
        info = _wait_done(slurm, job, run_dir, out)
        _wait_done(slurm, whole, whole_dir, whole_out)
    finally:
        slurm.scancel(job, whole, check=False)
    k, reason = _preempted(run_dir / "logs" / "attempt0" / "rank0.log")
    assert reason == "SIGUSR1" and 2 <= k < steps  # rank 0 never got the signal: the all-reduce told it
    assert info["Restarts"] == "1"
    attempt0 = out.read_text().split("(attempt 1;")[0]
    assert "Exited with exit code 75" in attempt0 and f"requeueing job {job}" in attempt0
    for r in range(2):
        first = (run_dir / "logs" / "attempt0" / f"rank{r}.log").read_text()
        assert f"rank {r}/2 local {r}/2" in first  # slurm/task.sh's torch.distributed environment
        assert (
            f"PROBE OK rank={r} world=2 tp=1 dp=2"
            in (run_dir / "logs" / "attempt1" / f"rank{r}.log").read_text()
        )
    assert f"(next step {k})" in (run_dir / "logs" / "attempt1" / "rank0.log").read_text()
    _same_metrics(_metrics(run_dir), _metrics(whole_dir))
