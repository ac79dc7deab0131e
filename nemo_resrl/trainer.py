"""The RL loop, glue only: rollout -> rewards -> advantages -> old-log-prob pass (+ ResRL) -> updates
-> refit -> metrics. Every piece of math lives in ``nemo_resrl.algorithms``; the actor, the ResRL pass
and the rollout engine live in ``models``, ``distributed`` and ``rollout``.

This is the core step of issue 6 (configs, checkpoints / resume, logging, data and the CLI build on
it). One process holds the actor and a colocated rollout engine; with several ranks every data-parallel
rank takes its share of the step's prompts.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig
from nemo_resrl.algorithms.checks import require
from nemo_resrl.algorithms.losses import PolicyLossConfig
from nemo_resrl.algorithms.resrl import ResRLConfig, token_advantages
from nemo_resrl.algorithms.shaping import nonzero_variance_groups, overlong_penalty
from nemo_resrl.distributed.resrl_pass import ResponseMeta, old_logprobs_with_resrl
from nemo_resrl.models.actor import MegatronActor
from nemo_resrl.models.batch import Sequences
from nemo_resrl.rewards.base import RewardResult as GradedBatch
from nemo_resrl.rollout.engine import (
    RolloutBatch,
    RolloutEngine,
    check_consistency,
    concat_rollouts,
    token_mult_prob_error,
)

log = logging.getLogger(__name__)

# algorithm -> (advantage estimator, uses ResRL weights, policy-loss overrides)
ALGORITHMS: dict[str, tuple[str, bool, dict]] = {
    "grpo": ("grpo", False, {}),
    "dr_grpo": ("dr_grpo", False, {}),
    "psr": ("psr", False, {}),
    "nsr": ("nsr", False, {}),
    "w_reinforce": ("w_reinforce", False, {}),
    "dapo": ("grpo", False, {"clip_high": 0.28, "agg": "token-mean"}),
    "resrl": ("grpo", True, {}),
}


WEIGHT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # logged as weights/negative_p10 ... _p90


@dataclass
class DynamicSamplingConfig:
    """DAPO dynamic sampling: drop groups whose task rewards are all equal (all correct or all wrong) and
    generate more prompts, up to ``max_rounds`` generation rounds per step (the first included), until
    the step has ``trainer.prompts_per_step`` groups with signal. Rounds short of that train on what
    they kept (logged); a step where a data-parallel rank kept nothing skips its update (counted)."""

    enabled: bool = False
    max_rounds: int = 3

    def validate(self) -> DynamicSamplingConfig:
        require(
            self.max_rounds >= 1, f"algorithm.dynamic_sampling.max_rounds must be >= 1, got {self.max_rounds}"
        )
        return self


@dataclass
class OverlongConfig:
    """DAPO soft overlong punishment, added to the task reward: 0 up to ``max_tokens - buffer`` response
    tokens, then linearly down to ``-factor`` at ``max_tokens`` (``rollout.sampling.max_tokens``).
    buffer 0: a fifth of max_tokens (DAPO: 4096 of 20480)."""

    enabled: bool = False
    buffer: int = 0
    factor: float = 1.0

    def validate(self) -> OverlongConfig:
        require(self.buffer >= 0, f"algorithm.overlong.buffer must be >= 0, got {self.buffer}")
        require(self.factor >= 0, f"algorithm.overlong.factor must be >= 0, got {self.factor}")
        return self


@dataclass
class AlgorithmConfig:
    """Which algorithm; its advantage, loss and ResRL settings (SPEC defaults); DAPO's dynamic sampling
    and overlong shaping (on in ``conf/algorithm/dapo.yaml``, usable with any algorithm)."""

    name: str = "resrl"
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    resrl: ResRLConfig = field(default_factory=ResRLConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)

    def validate(self) -> AlgorithmConfig:
        require(
            self.name in ALGORITHMS, f"algorithm.name must be one of {tuple(ALGORITHMS)}, got {self.name!r}"
        )
        self.loss.validate()
        self.resrl.validate()
        self.dynamic_sampling.validate()
        self.overlong.validate()
        return self

    @property
    def estimator(self) -> str:
        return ALGORITHMS[self.name][0]

    @property
    def uses_resrl(self) -> bool:
        return ALGORITHMS[self.name][1]


@dataclass
class StepConfig:
    """prompts_per_step: prompts per step over all data-parallel ranks (each sampled n times);
    mini_batches: optimizer updates per step (the step's responses split in this many parts);
    lld_every: every this many steps (0: never) measure the positive log-likelihood displacement, the
    change of log pi(y+ | c) over the step's correct responses caused by the step's updates."""

    prompts_per_step: int = 8
    mini_batches: int = 1
    lld_every: int = 1

    def validate(self) -> StepConfig:
        require(
            self.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {self.prompts_per_step}"
        )
        require(self.mini_batches >= 1, f"trainer.mini_batches must be >= 1, got {self.mini_batches}")
        require(self.lld_every >= 0, f"trainer.lld_every must be >= 0, got {self.lld_every}")
        return self


class RewardResult(Protocol):
    rewards: torch.Tensor  # [N] float
    correct: torch.Tensor  # [N] bool

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]: ...


RewardFn = Callable[[RolloutBatch, Sequence[dict]], RewardResult]
# a step's extra prompts for dynamic-sampling round r >= 1 (a function of step and round: resume-safe)
RefillFn = Callable[[int, int], Sequence[dict]]
PhaseFn = Callable[[str], None]


class Trainer:
    """Runs training steps; see the module docstring. ``refill(step, round)`` gives the extra prompts of
    dynamic-sampling rounds; ``on_phase(name)`` is told each phase as it starts (progress display)."""

    def __init__(
        self,
        actor: MegatronActor,
        engine: RolloutEngine,
        reward_fn: RewardFn,
        algorithm: AlgorithmConfig,
        step_cfg: StepConfig,
        *,
        seed: int = 0,
        refill: RefillFn | None = None,
        on_phase: PhaseFn | None = None,
    ):
        self.actor, self.engine, self.reward_fn = actor, engine, reward_fn
        self.seed = seed
        self.algo = algorithm.validate()
        self.step_cfg = step_cfg.validate()
        self.refill = refill
        self.on_phase = on_phase or (lambda name: None)
        require(
            not self.algo.dynamic_sampling.enabled or refill is not None,
            "algorithm.dynamic_sampling needs a refill function for its extra generation rounds",
        )
        self.step = 0
        # old / new log-probs of the distribution the rollout sampled from (softmax(logits / T))
        require(
            engine.cfg.sampling.temperature > 0,
            "rollout.sampling.temperature must be > 0 for training (the policy is softmax(logits / T))",
        )
        self.actor.logits_temperature = float(engine.cfg.sampling.temperature)

    def _share(self, records: Sequence[dict]) -> tuple[list[dict], int]:
        """This data-parallel rank's prompts of the step, and the global index of the first one."""
        lay = self.actor.layout
        n = len(records)
        per = -(-n // lay.dp)
        start = min(n, lay.dp_rank * per)
        return list(records[start : start + per]), start

    def _dp_sum(self, values: list[float]) -> list[float]:
        """Sums over data-parallel ranks (identity without DP)."""
        if self.actor.layout.dp == 1:
            return values
        from megatron.core import parallel_state as ps

        group = ps.get_data_parallel_group()
        device = self.actor.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, group=group)
        return t.cpu().tolist()

    def _round(self, records: Sequence[dict], round_: int) -> tuple[RolloutBatch, GradedBatch, torch.Tensor]:
        """Generate and grade this rank's share of ``records``: (rollout, reward, global group ids)."""
        local, first = self._share(records)
        require(
            len(local) > 0,
            "this data-parallel rank got no prompt: use prompts_per_step >= data-parallel size",
        )
        sampling = self.engine.cfg.sampling
        if sampling.seed is not None:  # a fresh, reproducible stream per step and round (resume repeats it)
            salt = 7919 * (self.seed + 1) * (self.step + 1) + 104_729 * round_
            sampling = replace(sampling, seed=(sampling.seed + salt) % (1 << 30))
        self.on_phase("generate" if round_ == 0 else f"generate (round {round_ + 1})")
        rollout = self.engine.generate([r["prompt_ids"] for r in local], sampling, first_index=first)
        self.on_phase("reward")
        reward = self.reward_fn(rollout, local)
        group_ids = rollout.prompt_index + first + round_ * len(records)
        return rollout, reward, group_ids

    def _rollout(self, records: Sequence[dict]) -> tuple:
        """The step's rollout; with dynamic sampling only groups with reward variance, over up to
        ``max_rounds`` rounds. Returns (rollout, rewards [N], correct [N], group ids [N], metrics) for the
        kept responses (all None when this rank kept none); the reward metrics cover EVERY generated
        response."""
        ds = self.algo.dynamic_sampling
        rounds: list[tuple[RolloutBatch, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        generated: list[GradedBatch] = []
        target, kept_global, dropped_global = len(records), 0, 0
        for r in range(ds.max_rounds if ds.enabled else 1):
            batch = records if r == 0 else self.refill(self.step, r)  # type: ignore[misc]
            rollout, reward, gids = self._round(batch, r)
            generated.append(reward)
            if not ds.enabled:
                rounds.append((rollout, reward.rewards, reward.correct, gids))
                break
            keep = nonzero_variance_groups(reward.rewards.float(), gids)
            n_groups = len(set(gids.tolist()))
            n_kept = len(set(gids[keep].tolist()))
            if n_kept:
                rounds.append(_select(rollout, reward, gids, keep))
            local_kept = sum(len(set(g.tolist())) for *_, g in rounds)
            kept, dropped, ranks_empty = self._dp_sum([n_kept, n_groups - n_kept, float(local_kept == 0)])
            kept_global, dropped_global = kept_global + kept, dropped_global + dropped
            if kept_global >= target and ranks_empty == 0:
                break
        metrics = _merge_rewards(generated).as_metrics()
        if ds.enabled:
            metrics.update(
                {
                    "dynamic_sampling/rounds": float(r + 1),
                    "dynamic_sampling/kept_groups": kept_global,
                    "dynamic_sampling/dropped_groups": dropped_global,
                    "dynamic_sampling/short": float(kept_global < target),
                }
            )
            if kept_global < target:
                log.warning(
                    "step %d: dynamic sampling kept %d of %d groups after %d rounds (%d had no reward "
                    "variance); training on what it kept (raise algorithm.dynamic_sampling.max_rounds)",
                    self.step,
                    kept_global,
                    target,
                    r + 1,
                    dropped_global,
                )
        if not rounds:
            return None, None, None, None, metrics
        return (
            concat_rollouts([x[0] for x in rounds]),
            torch.cat([x[1] for x in rounds]),
            torch.cat([x[2] for x in rounds]),
            torch.cat([x[3] for x in rounds]),
            metrics,
        )

    def train_step(self, records: Sequence[dict]) -> dict[str, float]:
        """One RL step on ``records`` (each with ``prompt_ids``: list[int], plus what the reward needs)."""
        t0 = time.perf_counter()
        self.engine.wake_up()
        rollout, rewards, correct, group_ids, metrics = self._rollout(records)
        t_gen = time.perf_counter()
        skip = self._dp_sum([float(rollout is None)])[0] > 0
        if skip:  # dynamic sampling left a data-parallel rank without any group: no update this step
            log.warning("step %d: a data-parallel rank kept no group with reward variance", self.step)
            metrics.update({"step": float(self.step), "train/update_skipped": 1.0})
            self.step += 1
            return self._reduce_over_dp(metrics)
        n_per = self.engine.cfg.sampling.n
        response_ids = group_ids * n_per + torch.arange(len(rollout)) % n_per
        shaped = rewards.float()
        ol = self.algo.overlong
        if ol.enabled:
            max_len = self.engine.cfg.sampling.max_tokens
            buffer = ol.buffer or max(1, max_len // 5)
            penalty = overlong_penalty(rollout.lengths, max_len, min(buffer, max_len), ol.factor)
            shaped = shaped + penalty
            metrics["reward/overlong_penalty_mean"] = float(penalty.mean())
        adv = ADVANTAGE_ESTIMATORS.get(self.algo.estimator)(shaped, correct, group_ids, self.algo.advantage)
        seqs = rollout.to_sequences()
        self.on_phase("old log-probs" + (" + ResRL" if self.algo.uses_resrl else ""))
        if self.algo.uses_resrl:
            res = old_logprobs_with_resrl(
                self.actor,
                seqs,
                ResponseMeta(group_ids=group_ids, response_ids=response_ids, advantages=adv),
                self.algo.resrl,
                step=self.step,
            )
            old = res.outputs
            token_adv = token_advantages(adv, res.weights, self.algo.resrl.lambda_pos) * old.mask
            metrics.update(res.stats.as_metrics())
            neg = old.mask & (adv < 0)[:, None]
            w = res.weights[neg]
            # the distribution of the negative tokens' weights (``nemo-resrl plot`` draws it as bands)
            metrics["weights/negative_mean"] = float(w.mean()) if w.numel() else float("nan")
            qs = w.float().quantile(torch.tensor(WEIGHT_QUANTILES)) if w.numel() else None
            for i, q in enumerate(WEIGHT_QUANTILES):
                value = float(qs[i]) if qs is not None else float("nan")
                metrics[f"weights/negative_p{round(q * 100)}"] = value
        else:
            old = self.actor.forward_logprobs(seqs)
            token_adv = adv[:, None].expand_as(old.logprobs) * old.mask
        t_old = time.perf_counter()
        consistency = token_mult_prob_error(rollout.response_logprobs(), old.logprobs, old.mask)
        check_consistency(consistency, self.engine.cfg, self.step)
        self.engine.sleep()
        self.on_phase("train")
        update = self._updates(seqs, old.logprobs, token_adv, old.mask)
        t_train = time.perf_counter()
        every = self.step_cfg.lld_every
        if every and self.step % every == 0:
            self.on_phase("log-likelihood displacement")
            metrics.update(self._positive_lld(seqs, old.logprobs, old.mask, correct))
        t_lld = time.perf_counter()
        self.on_phase("refit")
        self.engine.wake_up()
        refit = self.engine.refit(self.actor.export_hf_weights())
        t_end = time.perf_counter()
        metrics.update({f"train/{k}": v for k, v in update.items()})
        metrics.update(
            {
                "step": float(self.step),
                "train/update_skipped": 0.0,
                "response/length_mean": float(rollout.lengths.float().mean()),
                "response/truncated_frac": float(rollout.truncated.float().mean()),
                "rollout/token_mult_prob_error": consistency,
                "time/generate_s": t_gen - t0,
                "time/old_logprobs_s": t_old - t_gen,
                "time/train_s": t_train - t_old,
                "time/lld_s": t_lld - t_train,
                "time/refit_s": t_end - t_lld,
                "refit/bytes": float(refit.bytes),
            }
        )
        self.step += 1
        return self._reduce_over_dp(metrics)

    def evaluate(self, records: Sequence[dict]) -> dict[str, float]:
        """Greedy (one response per prompt) accuracy on ``records``, over all data-parallel ranks."""
        local, _ = self._share(records)
        greedy = replace(self.engine.cfg.sampling, n=1, temperature=0.0, seed=None)
        self.engine.wake_up()
        rollout = self.engine.generate([r["prompt_ids"] for r in local], greedy)
        reward = self.reward_fn(rollout, local)
        total, correct, length, n = self._dp_sum(
            [
                float(reward.rewards.sum()),
                float(reward.correct.sum()),
                float(rollout.lengths.sum()),
                float(len(rollout)),
            ]
        )
        return {
            "eval/reward_mean": total / n,
            "eval/accuracy": correct / n,
            "eval/length_mean": length / n,
            "eval/n": n,
        }

    def _positive_lld(self, seqs: Sequences, old_logp, mask, correct: torch.Tensor) -> dict[str, float]:
        """Mean change of log pi(y+ | c) over the step's correct responses, after minus before the
        step's updates (sequence sums and per token), over all data-parallel ranks."""
        pos = correct.nonzero().flatten().tolist()
        total = n_tok = 0.0  # sum over the positives' tokens of (new - old) log-prob, and their count
        if pos:
            sub = Sequences([seqs.tokens[i] for i in pos], [seqs.prompt_lens[i] for i in pos])
            new = self.actor.forward_logprobs(sub)
            width = new.logprobs.shape[1]
            delta = (new.logprobs - old_logp[pos, :width]) * mask[pos, :width]
            total, n_tok = float(delta.sum()), float(mask[pos, :width].sum())
        total, n_seq, n_tok = self._dp_sum([total, float(len(pos)), n_tok])
        if n_seq == 0:
            return {"lld/positives": 0.0}
        return {
            "lld/positives": n_seq,
            "lld/seq_logp_delta_mean": total / n_seq,  # the mean change of log pi(y+ | c)
            "lld/token_logp_delta_mean": total / max(n_tok, 1.0),
        }

    def _updates(self, seqs: Sequences, old_logp, token_adv, mask) -> dict[str, float]:
        """``mini_batches`` optimizer updates over the step's responses; metrics averaged over them."""
        parts = torch.arange(len(seqs)).chunk(self.step_cfg.mini_batches)
        acc: dict[str, float] = {}
        for idx in parts:
            i = idx.tolist()
            sub = Sequences([seqs.tokens[j] for j in i], [seqs.prompt_lens[j] for j in i])
            width = max(sub.response_lens)
            m = self.actor.train_step(
                sub, old_logp[i, :width], token_adv[i, :width], mask[i, :width], self.algo.loss
            )
            for k, v in m.items():
                acc[k] = acc.get(k, 0.0) + v / len(parts)
        return acc

    def _reduce_over_dp(self, metrics: dict[str, float]) -> dict[str, float]:
        """The rank-local metrics over data-parallel ranks (train/, resrl/, lld/ and dynamic_sampling/
        are already global): counts (reward/n, reward/count/*) summed, the other reward/ metrics
        averaged over every response (weighted by each rank's reward/n: shares can differ), the rest
        averaged over ranks; a key only some ranks have (a reward outcome none of the others saw)
        reduces over those ranks."""
        lay = self.actor.layout
        if lay.dp == 1:
            return metrics
        from megatron.core import parallel_state as ps

        every: list[dict[str, float]] = [{} for _ in range(lay.dp)]
        dist.all_gather_object(every, metrics, group=ps.get_data_parallel_group())
        out = dict(metrics)
        for k in set().union(*every):
            if k.startswith(("train/", "resrl/", "lld/", "dynamic_sampling/")) or k == "step":
                continue
            have = [d for d in every if k in d]
            if k == "reward/n" or k.startswith("reward/count/"):
                out[k] = sum(d[k] for d in have)
            elif k.startswith("reward/") and all("reward/n" in d for d in have):
                n = sum(d["reward/n"] for d in have)
                out[k] = sum(d[k] * d["reward/n"] for d in have) / max(n, 1.0)
            else:
                out[k] = sum(d[k] for d in have) / len(have)
        return out


def _select(
    rollout: RolloutBatch, reward: GradedBatch, group_ids: torch.Tensor, keep: torch.Tensor
) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept responses (whole groups) of one round: (rollout, rewards, correct, group ids)."""
    idx = keep.nonzero().flatten()
    return rollout.subset(idx), reward.rewards[idx], reward.correct[idx], group_ids[idx]


def _merge_rewards(results: Sequence[GradedBatch]) -> GradedBatch:
    counts: collections.Counter = collections.Counter()
    for r in results:
        counts.update(r.counts)
    return GradedBatch(
        torch.cat([r.rewards for r in results]), torch.cat([r.correct for r in results]), counts
    )
