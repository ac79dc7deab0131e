"""The trainer's orchestration with fakes behind its interfaces (``fakes.py``), in seconds: the phase
order, dynamic-sampling rounds, data-parallel metric reduction, mini-batches, skipped updates, the LLD
measurement, the ResRL weights reaching the loss, and the run loop with checkpoints and resume.

The same trainer runs on the real stack in ``test_trainer_e2e.py`` and ``test_loop*.py``.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from nemo_resrl.algorithms.advantages import grpo_advantage
from nemo_resrl.config import (
    AdvantageConfig,
    AlgorithmConfig,
    ResRLConfig,
    RolloutConfig,
    SamplingConfig,
    TrainerConfig,
)
from nemo_resrl.training.data_parallel import SingleProcess
from nemo_resrl.training.step_metrics import StepMetrics, reduce_over_ranks
from nemo_resrl.training.trainer import Trainer
from tests.training.fakes import (
    BigramEngine,
    BigramPolicy,
    ThreadDataParallel,
    ThreadGroup,
    even_first_token,
    fake_run,
    prompts,
    without_times,
)

N = 4  # responses per prompt
ROLLOUT = RolloutConfig(sampling=SamplingConfig(n=N, temperature=1.0, max_tokens=5, seed=0))
RESRL = ResRLConfig(max_rows=64, rank=4)


def make(algorithm: str = "resrl", *, dp=None, refill=None, events=None, seed=0, **trainer_kw):
    events = [] if events is None else events
    policy = BigramPolicy(seed=seed, events=events)
    engine = BigramEngine(policy, events)
    algo = AlgorithmConfig.preset(algorithm, resrl=RESRL)
    cfg = TrainerConfig(**{"prompts_per_step": 4, **trainer_kw})
    trainer = Trainer(
        policy,
        engine,
        even_first_token,
        algorithm=algo,
        trainer=cfg,
        rollout=ROLLOUT,
        dp=dp or SingleProcess(),
        refill=refill,
    )
    return trainer, policy, engine, events


def phase_order(m: dict[str, float]) -> list[str]:
    """The phases of a step's metrics (``time/<phase>_s``), in the order they first ran."""
    return [k[len("time/") : -len("_s")] for k in m if k.startswith("time/")]


def test_one_step_runs_the_phases_in_order_with_the_colocated_memory_lifecycle():
    """The engine sleeps before the log-prob pass and wakes its weights for the refit, its KV cache only
    after it; the policy is told at each turn (NeMo RL's order)."""
    trainer, policy, engine, events = make("resrl", mini_batches=2)
    m = trainer.train_step(prompts(4))
    assert phase_order(m) == ["generate", "reward", "old_logprobs", "train", "lld", "refit"]
    assert events == [
        "engine.generate",
        "engine.sleep",
        "policy.prepare_for_logprobs",
        "policy.logprobs+resrl",
        "policy.prepare_for_training",
        "policy.train_step",
        "policy.train_step",
        "policy.logprobs",  # the LLD pass over the correct responses, after the updates
        "policy.prepare_for_refit",
        "engine.wake_up:weights",
        "engine.refit",
        "policy.export_weights",  # a lazy stream: the refit pulls the weights as it loads them
        "policy.finish_refit",
        "engine.wake_up:kv_cache",
    ]
    assert trainer.step == 1 and m["step"] == 0.0 and m["train/update_skipped"] == 0.0
    for phase in ("generate", "reward", "old_logprobs", "train", "lld", "refit"):
        assert m[f"time/{phase}_s"] >= 0.0
    # the engine now holds the trained weights: the next step's sampler and actor agree exactly
    assert torch.equal(engine.emb, policy.emb.detach()) and torch.equal(engine.out, policy.out.detach())
    m2 = trainer.train_step(prompts(4, seed=1))
    assert m2["rollout/token_mult_prob_error"] == pytest.approx(1.0, abs=1e-5)


def test_grpo_skips_the_resrl_pass_and_trains_on_the_broadcast_advantage():
    trainer, policy, _, events = make("grpo")
    m = trainer.train_step(prompts(4))
    assert "policy.logprobs+resrl" not in events and phase_order(m)[2] == "old_logprobs"
    call = policy.train_calls[0]
    adv = call["adv"]
    # every valid token of a response carries the response's advantage; padding 0
    per_response = adv.sum(1) / call["mask"].sum(1)
    assert torch.allclose(adv, per_response[:, None] * call["mask"])


def test_resrl_weights_reach_the_loss_as_token_advantages():
    trainer, policy, engine, _ = make("resrl")
    records = prompts(4)
    # the step's inputs, reproduced independently: same rollout (same seeds), same rewards, same weights
    rollout = engine.generate([r["prompt_ids"] for r in records], trainer.sampling_for(0, 0))
    graded = even_first_token(rollout, records)
    adv = grpo_advantage(graded.rewards, graded.correct, rollout.prompt_index, AdvantageConfig())
    trainer.train_step(records)
    call = policy.train_calls[0]
    pos, neg = adv > 0, adv < 0
    assert pos.any() and neg.any()
    mask = call["mask"]
    # positives: lambda_pos * A on every token
    assert torch.allclose(call["adv"][pos], (RESRL.lambda_pos * adv[pos, None] * mask[pos]).float())
    # negatives: w * A with w in [xi, 1], not all equal to 1 (the subspace did something)
    w = call["adv"][neg] / adv[neg, None]
    w = w[mask[neg]]
    assert float(w.min()) >= RESRL.xi - 1e-6 and float(w.max()) <= 1 + 1e-6 and float(w.min()) < 0.99
    m = trainer.train_step(prompts(4, seed=1))
    assert RESRL.xi <= m["weights/negative_mean"] <= 1.0 and m["resrl/groups_active"] >= 1
    assert m["weights/negative_p10"] <= m["weights/negative_p50"] <= m["weights/negative_p90"]


def test_mini_batches_split_the_step_into_disjoint_updates():
    trainer, policy, _, _ = make("grpo", mini_batches=3)
    m = trainer.train_step(prompts(4))
    sizes = [len(c["seqs"]) for c in policy.train_calls]
    assert len(sizes) == 3 and sum(sizes) == 4 * N
    seen = [tuple(t.tolist()) for c in policy.train_calls for t in c["seqs"].tokens]
    assert len(seen) == 4 * N  # every response trained on once
    assert m["train/update_ok"] == 1.0 and math.isfinite(m["train/loss"])


def test_dynamic_sampling_refills_until_the_step_has_groups_with_signal():
    calls = []

    def refill(step, round_):
        calls.append((step, round_))
        return prompts(4, seed=100 + round_)  # mixed outcomes: some groups have reward variance

    trainer, policy, engine, _ = make("dapo", refill=refill)
    records = prompts(4, force=1)  # round 1: every group all-correct, no signal
    m = trainer.train_step(records)
    assert calls[0] == (0, 1)
    rounds = int(m["dynamic_sampling/rounds"])
    assert rounds == len(engine.generated) == len(calls) + 1 >= 2
    assert m["reward/n"] == N * 4 * rounds  # reward metrics cover every generated response
    assert m["dynamic_sampling/dropped_groups"] >= 4
    kept = policy.train_calls[0]["seqs"]
    assert len(kept) == N * m["dynamic_sampling/kept_groups"]
    # what was trained: only groups whose rewards differ (the all-correct first round is gone)
    groups = {}
    for toks, plen, a in zip(kept.tokens, kept.prompt_lens, policy.train_calls[0]["adv"]):
        groups.setdefault(tuple(toks[:plen].tolist()), []).append(float(a[0]))
    assert all(max(v) > min(v) for v in groups.values())
    assert m["dynamic_sampling/short"] == float(m["dynamic_sampling/kept_groups"] < 4)


def test_a_step_with_no_group_left_skips_its_update():
    trainer, policy, engine, events = make("dapo", refill=lambda step, r: prompts(4, seed=r, force=0))
    m = trainer.train_step(prompts(4, force=1))
    assert m["train/update_skipped"] == 1.0 and m["dynamic_sampling/rounds"] == 3
    assert m["dynamic_sampling/kept_groups"] == 0 and m["dynamic_sampling/short"] == 1.0
    assert not policy.train_calls and engine.refits == 0 and "engine.sleep" not in events
    assert engine.awake == {"weights", "kv_cache"}  # ready for the next step
    assert trainer.step == 1 and "train/loss" not in m


def test_the_lld_is_the_change_of_the_correct_responses_log_likelihood():
    trainer, policy, engine, _ = make("grpo", lld_every=2)
    records = prompts(4)
    before = BigramPolicy(seed=0)  # the same initial weights
    m = trainer.train_step(records)
    # reproduce the step's rollout with the initial weights, then its correct responses' log-likelihood
    batch = BigramEngine(before).generate([r["prompt_ids"] for r in records], trainer.sampling_for(0, 0))
    graded = even_first_token(batch, records)
    seqs = batch.to_sequences()
    old = before.logprobs(seqs).outputs
    new = policy.logprobs(seqs).outputs
    pos = graded.correct
    delta = ((new.logprobs - old.logprobs) * old.mask)[pos].sum(1)
    assert m["lld/positives"] == float(pos.sum()) > 0
    assert m["lld/seq_logp_delta_mean"] == pytest.approx(float(delta.mean()), rel=1e-4, abs=1e-5)
    assert "lld/positives" not in trainer.train_step(prompts(4, seed=1))  # lld_every=2: step 1 has none


def _step_on_every_rank(made: dict, records: list[dict]) -> dict[int, dict]:
    """One ``train_step`` per data-parallel rank, each in its own thread; their metrics by rank."""
    results: dict[int, dict] = {}

    def run(rank):
        results[rank] = made[rank][0].train_step(records)

    threads = [threading.Thread(target=run, args=(r,)) for r in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(results) == set(made)
    return results


def test_a_rank_without_correct_responses_still_joins_the_lld_pass():
    """Every policy call is collective over the job (expert-parallel MoE layers exchange tokens across
    data-parallel ranks): rank 0, whose groups are all wrong, must run as many log-prob passes as rank 1."""
    group = ThreadGroup(2)
    made = {r: make("grpo", dp=ThreadDataParallel(group, r), seed=0, lld_every=1) for r in range(2)}
    records = [{**r, "force": 0} for r in prompts(2)] + prompts(2, seed=3)  # rank 0 takes the first half
    results = _step_on_every_rank(made, records)
    calls = [made[r][3].count("policy.logprobs") for r in range(2)]
    assert calls[0] == calls[1] >= 2, calls  # the old-log-prob pass and the LLD pass on both ranks
    assert results[0]["lld/positives"] == results[1]["lld/positives"] > 0
    assert made[0][2].generated[0]["prompts"] == [r["prompt_ids"] for r in records[:2]]  # the forced-wrong


def test_data_parallel_ranks_take_their_share_and_reduce_metrics_by_kind():
    group = ThreadGroup(2)
    trainers = {r: make("resrl", dp=ThreadDataParallel(group, r), seed=0) for r in range(2)}
    records = prompts(4)
    results = _step_on_every_rank(trainers, records)
    # each rank generated its own half, with the global index of its first prompt
    gen = [trainers[r][2].generated[0] for r in range(2)]
    assert [g["first_index"] for g in gen] == [0, 2]
    assert gen[0]["prompts"] + gen[1]["prompts"] == [r["prompt_ids"] for r in records]
    m0, m1 = results[0], results[1]
    assert m0 == m1  # every rank reports the same reduced metrics
    assert m0["reward/n"] == 4 * N  # counts summed
    # the reward mean is over every response of the step (both halves)
    rewards = []
    for r in range(2):
        engine = BigramEngine(BigramPolicy(seed=0))
        share = records[2 * r : 2 * r + 2]
        batch = engine.generate(
            [x["prompt_ids"] for x in share], trainers[r][0].sampling_for(0, 0), first_index=2 * r
        )
        rewards += even_first_token(batch, share).rewards.tolist()
    assert m0["reward/mean"] == pytest.approx(sum(rewards) / len(rewards))


def test_reduce_over_ranks_by_kind():
    a, b = StepMetrics(), StepMetrics()
    for m, n, mean, t in ((a, 2.0, 1.0, 3.0), (b, 6.0, 0.0, 5.0)):
        m.sum({"reward/n": n})
        m.weighted({"reward/mean": mean}, weight=n)
        m.mean({"time/train_s": t})
        m.max({"memory/train_peak_gib": 10 * t})
        m.replicated({"train/loss": 0.5})
    a.sum({"reward/count/timeout": 1.0})  # only one rank saw a timeout
    out = reduce_over_ranks([a, b])
    assert out == {
        "reward/n": 8.0,
        "reward/mean": 0.25,
        "time/train_s": 4.0,
        "memory/train_peak_gib": 50.0,
        "train/loss": 0.5,
        "reward/count/timeout": 1.0,
    }
    c = StepMetrics()
    c.mean({"train/loss": 1.0})
    with pytest.raises(ValueError, match="different kinds"):
        reduce_over_ranks([a, c])


def test_phases_record_the_allocator_peak_of_each_phase_only_where_cuda_is_in_use(monkeypatch):
    """Each phase resets the allocator's peak as it starts and keeps the largest peak it saw (repeats of a
    phase: their maximum); without CUDA (or before it is initialised) there is nothing to report."""
    import nemo_resrl.training.phases as phases_mod
    from nemo_resrl.training.phases import Phases

    assert Phases().peak_metrics() == {}
    ph = Phases()
    with ph("generate"):
        pass
    assert ph.peak_metrics() == {}  # CPU: no CUDA in this process

    class FakeCuda:  # the allocator's host-side counters: the current peak since the last reset
        peak = 0

        def reset_peak_memory_stats(self):
            self.peak = 0

        def max_memory_allocated(self):
            return self.peak

    cuda = FakeCuda()
    monkeypatch.setattr(phases_mod, "_cuda", lambda: cuda)
    ph = Phases()
    for name, peak in (("generate", 3), ("train", 5), ("generate", 2)):
        with ph(name):
            assert cuda.peak == 0  # reset as the phase starts
            cuda.peak = peak * 2**30
    assert ph.peak_metrics() == {"memory/generate_peak_gib": 3.0, "memory/train_peak_gib": 5.0}


def test_evaluate_is_greedy_with_one_response_per_prompt():
    trainer, _, engine, _ = make("grpo")
    out = trainer.evaluate(prompts(3))
    assert out["eval/n"] == 3.0 and 0.0 <= out["eval/accuracy"] <= 1.0
    again = trainer.evaluate(prompts(3))
    assert again == out  # greedy: the same answers


def test_settings_the_trainer_cannot_run_are_refused():
    with pytest.raises(ValueError, match="refill"):
        make("dapo")
    policy = BigramPolicy(temperature=0.7)
    with pytest.raises(ValueError, match="rollout.sampling.temperature is 1.0"):
        Trainer(
            policy,
            BigramEngine(policy),
            even_first_token,
            algorithm=AlgorithmConfig.preset("grpo"),
            trainer=TrainerConfig(),
            rollout=ROLLOUT,
            dp=SingleProcess(),
        )


def test_the_run_loop_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    whole = fake_run(tmp_path / "whole", 4)
    assert [m["step"] for m in whole] == [0, 1, 2, 3] and "eval/accuracy" in whole[1]
    fake_run(tmp_path / "split", 2)
    resumed = fake_run(tmp_path / "split", 4)
    assert without_times(resumed) == without_times(whole)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 3]
    kept = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert kept == ["step_000003", "step_000004"]


def test_a_checkpoint_is_saved_with_the_engine_asleep_and_the_engine_refitted_after(tmp_path):
    """A save brings every offloaded part of the actor back to the device: the engine's memory must be
    free meanwhile, and the engine is whole again (weights refitted, KV cache awake) before the next step."""
    events: list[str] = []
    policy = BigramPolicy(seed=0, events=events)
    fake_run(tmp_path / "run", 1, policy=policy)
    save = events.index("policy.save_checkpoint")
    assert events[save - 1] == "engine.sleep", events
    assert events[save + 1 :] == [
        "policy.prepare_for_refit",
        "engine.wake_up:weights",
        "engine.refit",
        "policy.export_weights",
        "policy.finish_refit",
        "engine.wake_up:kv_cache",
    ]


def test_a_resume_loads_the_checkpoint_with_the_engine_asleep_and_releases_it_before_generating(tmp_path):
    """Loading brings the optimizer state and gradient buffers back to the device: with the engine awake
    the two would share it (the 32B and 235B presets do not fit that way). The load runs between the
    engine's sleep and the colocated refit sequence, which releases what training holds before the engine
    wakes; the first generation comes after it."""
    fake_run(tmp_path / "run", 1)
    events: list[str] = []
    policy = BigramPolicy(seed=0, events=events)
    policy.load_checkpoint = lambda path, load=policy.load_checkpoint: (
        events.append("policy.load_checkpoint"),
        load(path),
    )
    fake_run(tmp_path / "run", 2, policy=policy)
    load = events.index("policy.load_checkpoint")
    assert events[load - 1] == "engine.sleep", events
    assert events[load + 1 : load + 7] == [
        "policy.prepare_for_refit",
        "engine.wake_up:weights",
        "engine.refit",
        "policy.export_weights",
        "policy.finish_refit",
        "engine.wake_up:kv_cache",
    ], events
    assert events.index("engine.generate") > load + 6


def test_every_wake_of_the_engines_weights_is_followed_by_a_refit_before_it_generates(tmp_path):
    """What makes vLLM's sleep level 2 (the default: the weights are dropped, not copied to the host and
    back) safe: after every sleep the weights are rewritten by a refit before the engine generates again,
    through steps, checkpoint saves and a resume."""
    from nemo_resrl.config import RolloutConfig

    assert RolloutConfig().sleep_level == 2
    events: list[str] = []
    fake_run(tmp_path / "run", 2, policy=BigramPolicy(seed=0, events=events))
    fake_run(tmp_path / "run", 3, policy=BigramPolicy(seed=0, events=events))  # a resume
    slept = False
    for e in events:
        if e == "engine.sleep":
            slept = True
        elif e == "engine.refit":
            slept = False
        elif e == "engine.generate":
            assert not slept, events
    assert events.count("engine.sleep") >= 5


def test_a_step_that_leaves_a_data_parallel_rank_without_prompts_is_refused_on_every_rank():
    """5 prompts over 4 ranks: ceil(5 / 4) = 2 each leaves rank 3 empty; every rank must raise (a rank
    that went on alone would wait in a collective forever)."""
    group = ThreadGroup(4)
    for rank in range(4):
        trainer = make("grpo", dp=ThreadDataParallel(group, rank))[0]
        with pytest.raises(ValueError, match="5 prompts cannot be shared by 4 data-parallel ranks"):
            trainer.train_step(prompts(5))


# ------------------------------------------------------------------------------ recipes' extra pieces
def test_rewards_are_shaped_before_dynamic_sampling_and_the_advantages():
    """reward.incorrect replaces an incorrect response's reward and the length scale multiplies the
    positive ones; reward/mean is of the shaped rewards, the advantages are computed from them."""
    from nemo_resrl.algorithms.shaping import length_scaled_reward
    from nemo_resrl.config import RewardConfig
    from nemo_resrl.config.run import LengthScaleConfig

    graded: list = []

    def recording(rollout, records):
        res = even_first_token(rollout, records)
        graded.append((res, rollout.lengths.clone()))
        return res

    ls = LengthScaleConfig(start=2, max_length=5, end_scale=0.5)
    reward = RewardConfig(incorrect=-0.5, shaping="length_scaled", length_scale=ls)
    policy = BigramPolicy(seed=1)
    trainer = Trainer(
        policy,
        BigramEngine(policy),
        recording,
        algorithm=AlgorithmConfig.preset("dr_grpo"),
        trainer=TrainerConfig(prompts_per_step=4),
        rollout=ROLLOUT,
        dp=SingleProcess(),
        reward=reward,
    )
    m = trainer.train_step(prompts(4))
    ((res, lengths),) = graded
    base = torch.where(res.correct, res.rewards, torch.full_like(res.rewards, -0.5))
    shaped = length_scaled_reward(base, lengths, 2, 5, 0.5)
    assert not torch.equal(shaped, base)  # some correct response is long enough to be scaled
    assert m["reward/mean"] == pytest.approx(float(shaped.mean()))
    (call,) = policy.train_calls
    group_ids = torch.arange(len(shaped)) // N
    expected = shaped - torch.stack([shaped[group_ids == g].mean() for g in group_ids.tolist()])  # Dr.GRPO
    torch.testing.assert_close(call["adv"][:, 0] * call["mask"][:, 0], expected * call["mask"][:, 0])


def test_a_kl_run_of_the_fakes_resumes_with_the_reference_it_started_with(tmp_path):
    """KL to the initial policy: 0 at the first update, positive after; a run resumed by a policy built
    from OTHER weights (the HF directory changed) still reproduces the uninterrupted run, because the
    reference comes back from the checkpoint."""
    from dataclasses import replace

    base = AlgorithmConfig.preset("grpo")
    algo = replace(base, loss=replace(base.loss, kl_coef=0.2, kl_type="k3"))
    whole = fake_run(tmp_path / "whole", 4, policy=BigramPolicy(seed=0, reference=True), algorithm=algo)
    assert whole[0]["train/kl"] == 0.0 and all(m["train/kl"] > 0 for m in whole[1:])
    fake_run(tmp_path / "split", 2, policy=BigramPolicy(seed=0, reference=True), algorithm=algo)
    resumed = fake_run(tmp_path / "split", 4, policy=BigramPolicy(seed=5, reference=True), algorithm=algo)
    assert without_times(resumed) == without_times(whole)
    other = fake_run(tmp_path / "other", 4, policy=BigramPolicy(seed=5, reference=True), algorithm=algo)
    assert without_times(other) != without_times(whole)  # the starting weights do matter
    no_kl = fake_run(tmp_path / "no_kl", 4, policy=BigramPolicy(seed=0))
    assert "train/kl" not in no_kl[1]


def test_tis_weights_reach_the_update_and_are_logged():
    from dataclasses import replace

    trainer, policy, engine, _ = make("grpo")
    trainer.algo = replace(trainer.algo, loss=replace(trainer.algo.loss, tis_cap=2.0))
    trainer.loss_cfg = trainer.algo.loss
    m = trainer.train_step(prompts(4))
    (call,) = policy.train_calls
    w = call["is_weights"]
    assert w is not None and torch.allclose(w[call["mask"]], torch.ones(int(call["mask"].sum())))  # agree
    assert m["tis/weight_mean"] == pytest.approx(1.0) and m["tis/capped_frac"] == 0.0
