"""``rollout.engine: transformers`` (``rollout/transformers_engine.py``) on CPU with the tiny Qwen3: vLLM's
sampling semantics (processed log-probs, per-prompt seeds, EOS and budgets), refit, sleep / wake."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.rollout.transformers_engine import TransformersEngine, filter_logits
from tests.models.tiny_hf import make_tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("te") / "qwen3", "qwen3")


def _engine(model, **sampling) -> TransformersEngine:
    s = SamplingConfig(**{"n": 4, "max_tokens": 10, "seed": 3, **sampling})
    return TransformersEngine(
        model, RolloutConfig(engine="transformers", sampling=s, max_model_len=40).validate()
    )


def _teacher_forced(engine, prompt, response, temperature=1.0) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(ids).logits[0].float() / temperature, -1)
    return lp[len(prompt) - 1 : -1].gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_log_probs_are_those_of_the_distribution_sampled_from(model):
    """The processed log-prob of each sampled token: the actor's at the same temperature (teacher-forced)."""
    e = _engine(model, temperature=0.7)
    b = e.generate([[5, 6, 7], [8, 9, 10, 11, 12]])
    assert len(b) == 8 and b.prompt_index.tolist() == [0] * 4 + [1] * 4
    for i in range(8):
        p = b.prompts[int(b.prompt_index[i])]
        want = _teacher_forced(e, p, b.responses[i], 0.7)
        torch.testing.assert_close(b.logprobs[i], want, atol=1e-5, rtol=0)
    assert len({tuple(r) for r in b.responses}) > 1  # sampled, not greedy


def test_each_prompt_samples_from_the_stream_of_its_global_index(model):
    e = _engine(model)
    both = e.generate([[5, 6, 7], [8, 9, 10]], first_index=10)
    alone = e.generate([[8, 9, 10]], first_index=11)
    assert both.responses[4:] == alone.responses  # independent of what else is in the batch
    again = e.generate([[5, 6, 7], [8, 9, 10]], first_index=10)
    assert again.responses == both.responses
    other = e.generate([[5, 6, 7], [8, 9, 10]], first_index=12)
    assert other.responses != both.responses


def test_eos_stops_a_response_and_the_budget_truncates(model):
    e = _engine(model, max_tokens=6, temperature=1.0)
    e.eos_ids = [int(e.generate([[5, 6, 7]]).responses[0][2])]  # a token this prompt samples early
    b = e.generate([[5, 6, 7]])
    for r, t, n in zip(b.responses, b.truncated.tolist(), b.lengths.tolist()):
        assert n == len(r) <= 6
        assert (not t and r[-1] in e.eos_ids and r.index(r[-1]) == n - 1) or (t and n == 6)
    assert not bool(b.truncated.all())  # at least one stopped at the EOS (kept, as vLLM does)
    e.cfg.max_model_len = 9  # a 5-token prompt leaves 4
    assert set(e.generate([[5, 6, 7, 8, 9]]).lengths.tolist()) <= {1, 2, 3, 4}


def test_top_k_and_top_p_restrict_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    k2 = filter_logits(logits, 1.0, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isclose(k2.exp().sum(), torch.tensor(1.0))
    p = torch.softmax(logits, -1)[0]  # 0.64, 0.24, 0.09, 0.03, 0.004
    nucleus = filter_logits(logits, 1.0, 0, 0.8)  # 0.64 < 0.8: the second token crosses it, kept
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()
    torch.testing.assert_close(nucleus[0, :2].exp(), p[:2] / p[:2].sum())


def test_refit_rewrites_every_weight_and_sleep_frees_them(model, tmp_path):
    other = make_tiny(tmp_path / "other", "qwen3", seed=7)
    target = _engine(other, temperature=0.0)  # greedy of the other model
    e = _engine(model, temperature=0.0)
    prompt = [[5, 6, 7, 8]]
    assert e.generate(prompt).responses != target.generate(prompt).responses
    e.sleep()
    assert all(p.numel() == 0 for p in e.params.values())
    with pytest.raises(ValueError, match="asleep"):
        e.generate(prompt)
    e.wake_up(["weights"])
    stats = e.refit(
        (k, v.detach().clone()) for k, v in target.model.state_dict().items() if k in target.params
    )
    e.wake_up(["kv_cache"])
    assert stats.tensors == len(e.params) and stats.bytes > 0
    assert e.generate(prompt).responses == target.generate(prompt).responses
    with pytest.raises(ValueError, match="were not written"):
        e.refit(iter([]))
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        e.refit([("nope", torch.zeros(1))])
