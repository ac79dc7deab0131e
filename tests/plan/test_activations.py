"""The plan's activation bytes per token per layer (local layer spec) against what the Megatron actor
really saves for backward on CPU, counted with ``saved_tensors_hooks`` (``activation_probe.py``), with
and without full recomputation and with each core attention (sdpa, unfused), for tiny Qwen3 (q / k
norms), Qwen2, Llama and Qwen3-MoE (8 experts, 2 per token) models in fp32 and bf16."""

from __future__ import annotations

import json

import pytest

from nemo_resrl.plan.activations import layer_input_bytes, layer_token_bytes
from nemo_resrl.plan.arch import arch_from_hf_config
from tests.models.tiny_hf import make_tiny
from tests.plan.activation_probe import CASES, MODELS, SEQ_LENS


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from tests.launch import run_module

    work = tmp_path_factory.mktemp("activations")
    for family in MODELS:
        make_tiny(work / family, family)
    res = run_module("tests.plan.activation_probe", "--work", work, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    archs = {f: arch_from_hf_config(json.loads((work / f / "config.json").read_text())) for f in MODELS}
    return json.loads((work / "activations.json").read_text()), archs


@pytest.mark.slow
@pytest.mark.parametrize("model,dtype,recompute,attention", CASES)
def test_layer_activation_bytes_per_token_are_within_10_percent_of_what_autograd_saves(
    measured, model, dtype, recompute, attention
):
    got, archs = measured
    arch, p = archs[model], 2 if dtype == "bf16" else 4
    for s in SEQ_LENS:
        real = got[f"{model} {dtype} {recompute} {attention}"][str(s)]
        if recompute == "full":
            planned = layer_input_bytes(arch, p=p)
        else:
            planned = layer_token_bytes(arch, tp=1, p=p, seq_len=s, attention=attention)
        assert real > 0 and abs(planned - real) <= 0.10 * real, (s, planned, real)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_sdpa_saves_no_sequence_length_term_and_unfused_grows_with_it(measured, model):
    """What the SDPA attention keeps per token does not depend on S; the unfused one's softmax grows by
    heads x bytes per token for every token of S."""
    got, archs = measured
    sdpa, unfused = got[f"{model} bf16 none sdpa"], got[f"{model} bf16 none unfused"]
    assert len({sdpa[str(s)] for s in SEQ_LENS}) == 1, sdpa
    a = archs[model].num_attention_heads
    lo, hi = SEQ_LENS[0], SEQ_LENS[-1]
    assert unfused[str(hi)] - unfused[str(lo)] == pytest.approx(a * 2 * (hi - lo)), unfused
    assert sdpa[str(lo)] < unfused[str(lo)]
