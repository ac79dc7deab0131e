"""``nemo-resrl``: config errors and bad datasets exit 2 with the key / row named; the train default runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_command_exits_2_naming_the_choices(capsys):
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'evaluate'" in err and "convert" in err


def test_console_script_entry_point_resolves():
    out = subprocess.run([sys.executable, "-m", "nemo_resrl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "nemo-resrl convert to-hf" in out.stdout


def test_overrides_without_a_command_mean_train(capsys):
    assert main(["--print-config", "trainer.steps=4"]) == 0
    assert "steps: 4" in capsys.readouterr().out


def test_print_config_applies_overrides(capsys):
    assert main(["train", "--print-config", "algorithm=grpo", "trainer.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "name: grpo" in out and "steps: 3" in out


def test_a_bad_override_exits_2_naming_the_key(capsys):
    assert main(["train", "trainer.steps=0"]) == 2
    assert "trainer.steps must be >= 1" in capsys.readouterr().err
    assert main(["train", "trainer.stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_a_users_config_dir_is_laid_over_the_shipped_configs(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("# @package _global_\nactor:\n  hf_path: /my/model\n")
    assert main(["train", "--config-dir", str(tmp_path), "--print-config", "model=mine"]) == 0
    assert "hf_path: /my/model" in capsys.readouterr().out
    assert main(["train", "--config-dir", str(tmp_path / "missing"), "--print-config"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_bad_dataset_exits_2_naming_the_row_before_any_model_is_built(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + 2"\n{"problem": "", "answer": "0"}\n'
    )
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            "data.source=jsonl",
            f"data.path={data}",
            "reward.name=math",
            "trainer.eval_every=0",
            f"logging.run_dir={run_dir}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "DatasetError" in err and "row 2: not valid JSON" in err
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_train_with_the_transformers_rollout_engine_samples_what_the_actor_scores(tmp_path):
    """``rollout.engine=transformers`` (the GPU fallback where vLLM cannot be installed) runs the CPU
    default end to end: its sampler's log-probs equal the Megatron actor's (a stale or mis-mapped refit,
    or a sampler that drops the temperature, would move this ratio by more than a few percent) and the
    run exits 0 with a checkpoint."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nemo_resrl.cli", "train", "rollout.engine=transformers", "trainer.steps=2"]
    cmd += ["trainer.prompts_per_step=2", "rollout.sampling.n=4", "rollout.sampling.max_tokens=16"]
    cmd += ["trainer.eval_every=0", "checkpoint.every=2", f"logging.run_dir={run_dir}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [int(m["step"]) for m in rows] == [0, 1]
    # step 1 samples from the refitted weights: the refit reached the sampler
    assert all(abs(m["rollout/token_mult_prob_error"] - 1.0) < 1e-3 for m in rows), rows
    assert all(m["reward/n"] == 8 for m in rows)
    assert (run_dir / "checkpoints").is_dir()


@pytest.mark.slow
def test_train_default_runs_two_steps_and_writes_metrics_table_and_png(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "nemo_resrl.cli",
        "train",
        "trainer.steps=2",
        "trainer.prompts_per_step=2",
        "rollout.sampling.n=4",
        "rollout.sampling.max_tokens=24",
        "trainer.eval_every=2",
        "trainer.eval_prompts=4",
        "checkpoint.every=2",
        f"logging.run_dir={run_dir}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "step  reward" in out.stdout and "training curves:" in out.stdout
    # a quiet console: the start-up summary, the table, the end; the libraries' lines are in train.log
    assert out.stderr.strip() == "", out.stderr[-4000:]
    assert len(out.stdout.splitlines()) <= 2 + 1 + 2 + 2, out.stdout  # summary, prompts; header + rows; end
    text = (run_dir / "train.log").read_text()
    assert "vllm" in text and "megatron.bridge:  > number of parameters" in text
    assert (run_dir / "plots" / "reward.png").is_file() and (
        run_dir / "plots" / "resrl_weights.png"
    ).is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [int(m["step"]) for m in rows] == [0, 1]
    # the resrl preset's rewards: +1 correct, -1 incorrect (no response reaches the length scale's start)
    assert all(m["reward/mean"] == pytest.approx(2 * m["reward/accuracy"] - 1) for m in rows)
    assert all(m["reward/n"] == 8 for m in rows)
    assert 0.99 < rows[0]["rollout/token_mult_prob_error"] < 1.01  # sampler and actor agree at T=0.7
    assert "eval/accuracy" in rows[1] and rows[1]["eval/n"] == 4
    assert (run_dir / "plots" / "reward.png").stat().st_size > 5000
    assert (run_dir / "checkpoints").is_dir() and json.loads((run_dir / "data_stats.json").read_text())[
        "kept"
    ] > 0


@pytest.mark.slow
def test_a_sigterm_during_start_up_exits_75_before_the_first_step(tmp_path):
    """The stop protocol is armed at the first line of `train`: a SIGTERM while the model builds ends the
    run before its first step with status 75 and a preempted.json that says nothing was saved."""
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nemo_resrl.cli", "train", "trainer.steps=2", f"logging.run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(6)  # past the interpreter's start: loading the config, the data, the model
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-4000:]
    assert "preempted at step 0 (SIGTERM), no step finished, nothing to save" in out
    assert json.loads((run_dir / "preempted.json").read_text()) == {
        "step": 0,
        "reason": "SIGTERM",
        "checkpoint": None,
    }
    assert not (run_dir / "metrics.jsonl").read_text().strip()
