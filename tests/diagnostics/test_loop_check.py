"""The loop check's pieces that decide what a lent GPU run leaves behind: the child's output streamed as it
comes and the child killed at its limit; the stand-ins for modules a lent machine lacks."""

from __future__ import annotations

import subprocess
import sys
import time

from nemo_resrl.diagnostics.loop_check import SHIMS, run_streamed, write_shims


def test_the_child_is_streamed_and_killed_at_its_limit(capsys):
    child = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
    t0 = time.monotonic()
    rc, tail = run_streamed([sys.executable, "-c", child], {"PATH": "/usr/bin:/bin"}, timeout=3.0)
    assert rc is None and time.monotonic() - t0 < 30
    assert "killed after 3 s" in tail
    out = capsys.readouterr().out
    assert out.startswith("loop| pid ")  # copied to this process's stdout while the child ran
    pid = int(out.split()[2])
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0  # gone


def test_a_finished_child_gives_its_status_and_output():
    rc, tail = run_streamed([sys.executable, "-c", "print('done'); raise SystemExit(3)"], {}, timeout=60)
    assert rc == 3 and tail == "done\n"


def test_the_stand_ins_import_and_raise_when_used(tmp_path):
    assert write_shims(tmp_path, every=True) == list(SHIMS)
    probe = (
        "import matplotlib.pyplot as plt, pycosat\n"
        "from mpl_toolkits.mplot3d import Axes3D\n"
        f"assert plt.__file__.startswith({str(tmp_path)!r})\n"
        "try:\n"
        "    plt.figure()\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e.name, e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "matplotlib matplotlib is not installed (figure was called)\n"


def test_the_loop_ends_its_child_before_the_checks_deadline(tmp_path):
    """The child gets what is left of the check's time once the model is built, less 15 s for the report:
    a run that would outlast gpu_check.sh's limit ends with a report that says so, not a killed check."""
    from nemo_resrl.diagnostics.loop_check import run_loop

    t0 = time.monotonic()
    res = run_loop("cpu", tmp_path / "loop", deadline=t0 + 20.0)
    assert time.monotonic() - t0 < 20.0
    assert res["ok"] is False and res["returncode"] is None and "killed after" in res["log_tail"]


def test_a_loop_cut_by_its_time_limit_still_reports_the_steps_that_finished(tmp_path, monkeypatch):
    """The steps the run finished before its child was killed are reported (their times beside the plan),
    and the check fails."""
    import json

    import nemo_resrl.diagnostics.loop_check as lc

    def one_step_then_killed(cmd, env, timeout):
        run_dir = next(o.split("=", 1)[1] for o in cmd if o.startswith("logging.run_dir="))
        row = {"step": 0, "reward/accuracy": 0.25, "rollout/token_mult_prob_error": 1.0}
        row.update({f"time/{ph}_s": 1.5 for ph in lc.PHASES})
        (tmp_path / "loop" / "run").mkdir(parents=True, exist_ok=True)
        assert run_dir == str(tmp_path / "loop" / "run")
        (tmp_path / "loop" / "run" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        return None, "killed after 9 s\n"

    monkeypatch.setattr(lc, "run_streamed", one_step_then_killed)
    res = lc.run_loop("cpu", tmp_path / "loop")
    assert res["ok"] is False and res["returncode"] is None and res["log_tail"] == "killed after 9 s\n"
    assert res["steps"] == 1 and res["phase_seconds"] == {ph: [1.5] for ph in lc.PHASES}
    assert set(res["planned_gib"]) == set(lc.PHASES.values())
