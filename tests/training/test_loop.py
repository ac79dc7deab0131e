"""The training run: checkpoints, SIGKILL + resume repeating the uninterrupted run, metrics files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nemo_resrl.runs.checkpoints import CheckpointManager
from nemo_resrl.runs.manifest import write_manifest
from nemo_resrl.training.data_order import step_records
from nemo_resrl.training.metrics_log import format_row
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny


def _run(work: Path, run_dir: Path, *extra: str, steps: int = 6) -> subprocess.CompletedProcess:
    """Run the probe in its own session; afterwards kill whatever it left behind. A SIGKILLed trainer
    orphans the multiprocessing manager that dist-checkpoint saving spawns, which would otherwise keep
    our output pipes open (and this test waiting) forever."""
    log = run_dir.parent / f"{run_dir.name}-{len(list(run_dir.parent.glob(run_dir.name + '-*.log')))}.log"
    args = ["--work", work, "--run-dir", run_dir, "--steps", str(steps), *extra]
    return run_module("tests.training.run_probe", *args, timeout=900, log=log)


def _kill_during_save(work: Path, run_dir: Path) -> tuple[list[int], int, list[int]]:
    """Start the probe (checkpoint writers made slow), SIGKILL the trainer while its forked writers write,
    and return the pids of every process it had started, how many of them were forked writers, and those
    still alive 10 s after the kill (what is left is killed afterwards)."""
    import os
    import signal
    import sys
    import time

    import psutil

    cmd = [sys.executable, "-m", "tests.training.run_probe", "--work", str(work), "--run-dir", str(run_dir)]
    cmd += ["--steps", "2", "--slow-save", "120"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    log = run_dir.parent / f"{run_dir.name}-killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
                                stderr=out, start_new_session=True)  # fmt: skip
    trainer = psutil.Process(proc.pid)

    def forked_writer(child: psutil.Process) -> bool:  # children come and go (and turn zombie) meanwhile
        try:
            return child.ppid() == proc.pid and child.cmdline() == trainer.cmdline()
        except psutil.Error:
            return False

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    try:
        deadline = time.time() + 600
        writers = []
        while time.time() < deadline and not writers:  # the forked writers are the trainer's own command
            assert proc.poll() is None, log.read_text()[-3000:]
            kids = trainer.children(recursive=True)
            writers = [c for c in kids if forked_writer(c)]
            time.sleep(0.2)
        assert writers, "the save never started"
        time.sleep(1.0)
        started = [c.pid for c in trainer.children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(10)
        alive = [p for p in started if running(p)]
        return started, len(writers), alive
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.distributed
@pytest.mark.slow
def test_a_kill_9_during_a_checkpoint_save_leaves_no_process_and_no_lock_and_the_restart_resumes(tmp_path):
    """megatron's checkpoint writers are forked from the trainer and a results manager is spawned: before,
    a kill -9 of the trainer mid-save left them running (one at 6.2 GB after 98 s) and holding the run-dir
    lock, so the restart was refused naming a dead pid. Now every process the trainer started dies with it,
    the lock is free at once, and the restart resumes from the last intact checkpoint."""
    from nemo_resrl.runs.run_dir import lock_holder

    make_tiny(tmp_path / "qwen3", "qwen3")
    run = tmp_path / "run"
    started, writers, alive = _kill_during_save(tmp_path, run)
    assert writers >= 1 and len(started) > writers  # forked writers, megatron's results manager
    assert not alive, (started, alive)
    assert lock_holder(run) is None
    res = _run(tmp_path, run, steps=2)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-4000:]
    assert "in use by another trainer" not in res.stdout


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.slow
def test_sigkill_after_step_3_then_resume_equals_an_uninterrupted_run(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = _run(tmp_path, whole)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stderr[-4000:]
    res = _run(tmp_path, killed, "--kill-after", "3")
    assert res.returncode == -9  # SIGKILL, right after the checkpoint of step 3
    assert [s for s, _ in CheckpointManager(killed / "checkpoints").complete()] == [3, 4]
    res = _run(tmp_path, killed)
    assert res.returncode == 0 and "resumed from" in res.stdout and "(next step 4)" in res.stdout, res.stderr[
        -4000:
    ]
    a, b = _metrics(whole), _metrics(killed)
    assert [int(m["step"]) for m in b] == list(range(6))
    for x, y in zip(a[4:], b[4:]):
        same = {k: v for k, v in x.items() if not k.startswith("time/")}
        assert same == {k: y[k] for k in same}, int(x["step"])
    assert len({m["reward/mean"] for m in a}) > 1  # the metrics compared are not constant
    # a damaged latest checkpoint (a truncated shard): the resume falls back to the previous one and
    # reproduces the uninterrupted run from there
    damaged = tmp_path / "damaged"
    res = _run(tmp_path, damaged, "--kill-after", "3")
    assert res.returncode == -9
    shard = next((damaged / "checkpoints" / "step_000004" / "actor").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    res = _run(tmp_path, damaged)
    assert res.returncode == 0 and "(next step 3)" in res.stdout, res.stderr[-4000:]
    assert f"step_000004: actor/{shard.name} has" in res.stdout  # the skipped one, named
    c = _metrics(damaged)
    assert [int(m["step"]) for m in c] == list(range(6))
    for x, y in zip(a[3:], c[3:]):
        same = {k: v for k, v in x.items() if not k.startswith("time/")}
        assert same == {k: y[k] for k in same}, int(x["step"])
    # the last K = 2 checkpoints are kept; the reward panel is a real PNG
    assert [s for s, _ in CheckpointManager(whole / "checkpoints").complete()] == [5, 6]
    png = (whole / "plots" / "reward.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.distributed
@pytest.mark.slow
def test_a_kl_run_logs_the_kl_and_its_resume_keeps_the_reference_it_started_with(tmp_path):
    """A KL penalty on the real stack: 3 steps; killed after step 1 and resumed after the HF directory was
    overwritten with other weights, the run reproduces the uninterrupted one (the reference policy comes
    back from the checkpoint, not from the changed directory)."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    kl = ("--set", "algorithm.loss.kl_coef=0.1", "--set", "algorithm.loss.kl_type=k3")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = _run(tmp_path, whole, *kl, steps=3)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stderr[-4000:]
    a = _metrics(whole)
    assert a[0]["train/kl"] == 0.0  # the first update starts at the reference
    assert all(m["train/kl"] > 0 for m in a[1:])
    res = _run(tmp_path, killed, *kl, "--kill-after", "1", steps=3)
    assert res.returncode == -9
    assert (killed / "checkpoints" / "step_000002" / "actor" / "reference").is_dir()
    make_tiny(tmp_path / "qwen3", "qwen3", seed=7)  # the source changes under the run
    res = _run(tmp_path, killed, *kl, steps=3)
    assert res.returncode == 0 and "(next step 2)" in res.stdout, res.stderr[-4000:]
    b = _metrics(killed)
    same = {k: v for k, v in a[2].items() if not k.startswith("time/")}
    assert same == {k: b[2][k] for k in same}


def test_partial_and_damaged_checkpoints_are_never_latest_and_are_named(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_000002" / "actor").mkdir(parents=True)
    (root / "step_000002" / "trainer.json").write_text("{}")
    write_manifest(root / "step_000002")
    (root / ".partial-step_000004").mkdir()  # a save killed midway: not a checkpoint at all
    (root / "step_000003" / "actor").mkdir(parents=True)  # no trainer.json: renamed in, but damaged
    mgr = CheckpointManager(root)
    assert mgr.latest() == root / "step_000002"
    assert [s for s, _ in mgr.complete()] == [2, 3]
    newest = mgr.inspect()[0]
    assert newest.step == 3 and "trainer.json is missing (the trainer state and metrics of the run)" in (
        newest.defects
    )


def test_step_records_are_a_function_of_the_step():
    records = [{"i": i} for i in range(5)]
    first = [step_records(records, s, 2, seed=1) for s in range(5)]
    assert first == [step_records(records, s, 2, seed=1) for s in range(5)]
    seen = [r["i"] for s in range(5) for r in first[s]]
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))  # whole epochs
    assert seen[:5] != seen[5:]  # reshuffled per epoch


def test_table_row_formats_missing_values_as_blank():
    head = format_row({}, header=True)
    row = format_row({"step": 3, "reward/mean": 0.5})
    assert len(head) == len(row) and row.split()[:2] == ["3", "0.500"]


def test_a_machine_without_matplotlib_skips_the_curves_and_says_how_to_draw_them(tmp_path, monkeypatch):
    """The curves come after the last checkpoint: a missing plotting library (a lent GPU carries only what
    the run needs) must not turn a finished run into a failed one."""
    import nemo_resrl.plotting as plotting
    from nemo_resrl.training.loop import _plot_curves

    def no_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(plotting, "load_run", lambda run_dir: None)
    monkeypatch.setattr(plotting, "plot_runs", no_matplotlib)
    printed = []
    _plot_curves(tmp_path, printed.append)
    assert len(printed) == 1 and "skipped" in printed[0] and f"nemo-resrl plot {tmp_path}" in printed[0]
    monkeypatch.setattr(plotting, "plot_runs", lambda runs, out: {"written": ["a.png", "b.png"]})
    printed.clear()
    _plot_curves(tmp_path, printed.append)
    assert printed == [f"training curves: {tmp_path / 'plots'} (2 PNG files)"]
