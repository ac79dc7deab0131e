"""The RL loop, glue only: rollout -> rewards -> advantages -> old-log-prob pass (+ ResRL) -> updates
-> refit -> metrics. Every piece of math lives in ``nemo_resrl.algorithms``; the actor, the ResRL pass
and the rollout engine live in ``models``, ``distributed`` and ``rollout``.

This is the core step of issue 6 (configs, checkpoints / resume, logging, data and the CLI build on
it). One process holds the actor and a colocated rollout engine; with several ranks every data-parallel
rank takes its share of the step's prompts.
"""

from __future__ import annotations

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
from nemo_resrl.distributed.resrl_pass import ResponseMeta, old_logprobs_with_resrl
from nemo_resrl.models.actor import MegatronActor
from nemo_resrl.models.batch import Sequences
from nemo_resrl.rollout.engine import RolloutBatch, RolloutEngine, check_consistency, token_mult_prob_error

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


@dataclass
class AlgorithmConfig:
    """Which algorithm; its advantage, loss and ResRL settings (SPEC defaults)."""

    name: str = "resrl"
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    resrl: ResRLConfig = field(default_factory=ResRLConfig)

    def validate(self) -> AlgorithmConfig:
        require(
            self.name in ALGORITHMS, f"algorithm.name must be one of {tuple(ALGORITHMS)}, got {self.name!r}"
        )
        self.loss.validate()
        self.resrl.validate()
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
    mini_batches: optimizer updates per step (the step's responses split in this many parts)."""

    prompts_per_step: int = 8
    mini_batches: int = 1

    def validate(self) -> StepConfig:
        require(
            self.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {self.prompts_per_step}"
        )
        require(self.mini_batches >= 1, f"trainer.mini_batches must be >= 1, got {self.mini_batches}")
        return self


class RewardResult(Protocol):
    rewards: torch.Tensor  # [N] float
    correct: torch.Tensor  # [N] bool

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]: ...


RewardFn = Callable[[RolloutBatch, Sequence[dict]], RewardResult]


class Trainer:
    """Runs training steps; see the module docstring."""

    def __init__(
        self,
        actor: MegatronActor,
        engine: RolloutEngine,
        reward_fn: RewardFn,
        algorithm: AlgorithmConfig,
        step_cfg: StepConfig,
        *,
        seed: int = 0,
    ):
        self.actor, self.engine, self.reward_fn = actor, engine, reward_fn
        self.seed = seed
        self.algo = algorithm.validate()
        self.step_cfg = step_cfg.validate()
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

    def train_step(self, records: Sequence[dict]) -> dict[str, float]:
        """One RL step on ``records`` (each with ``prompt_ids``: list[int], plus what the reward needs)."""
        t0 = time.perf_counter()
        local, first = self._share(records)
        require(
            len(local) > 0,
            "this data-parallel rank got no prompt: use prompts_per_step >= data-parallel size",
        )
        self.engine.wake_up()
        sampling = self.engine.cfg.sampling
        if sampling.seed is not None:  # a fresh, reproducible stream per step (resume repeats it exactly)
            sampling = replace(
                sampling, seed=(sampling.seed + 7919 * (self.seed + 1) * (self.step + 1)) % (1 << 30)
            )
        rollout = self.engine.generate([r["prompt_ids"] for r in local], sampling)
        t_gen = time.perf_counter()
        reward = self.reward_fn(rollout, local)
        n_per = self.engine.cfg.sampling.n
        group_ids = rollout.prompt_index + first
        response_ids = group_ids * n_per + torch.arange(len(rollout)) % n_per
        adv = ADVANTAGE_ESTIMATORS.get(self.algo.estimator)(
            reward.rewards.float(), reward.correct, group_ids, self.algo.advantage
        )
        seqs = rollout.to_sequences()
        metrics: dict[str, float] = {}
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
            metrics["weights/negative_mean"] = float(w.mean()) if w.numel() else float("nan")
            metrics["weights/negative_p10"] = float(w.quantile(0.1)) if w.numel() else float("nan")
        else:
            old = self.actor.forward_logprobs(seqs)
            token_adv = adv[:, None].expand_as(old.logprobs) * old.mask
        t_old = time.perf_counter()
        consistency = token_mult_prob_error(rollout.response_logprobs(), old.logprobs, old.mask)
        check_consistency(consistency, self.engine.cfg, self.step)
        self.engine.sleep()
        update = self._updates(seqs, old.logprobs, token_adv, old.mask)
        t_train = time.perf_counter()
        self.engine.wake_up()
        refit = self.engine.refit(self.actor.export_hf_weights())
        t_end = time.perf_counter()
        metrics.update(reward.as_metrics())
        metrics.update({f"train/{k}": v for k, v in update.items()})
        metrics.update(
            {
                "step": float(self.step),
                "reward/mean": float(reward.rewards.float().mean()),
                "reward/accuracy": float(reward.correct.float().mean()),
                "response/length_mean": float(rollout.lengths.float().mean()),
                "response/truncated_frac": float(rollout.truncated.float().mean()),
                "rollout/token_mult_prob_error": consistency,
                "time/generate_s": t_gen - t0,
                "time/old_logprobs_s": t_old - t_gen,
                "time/train_s": t_train - t_old,
                "time/refit_s": t_end - t_train,
                "refit/bytes": float(refit.bytes),
            }
        )
        self.step += 1
        return self._reduce_over_dp(metrics)

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
        """Means over data-parallel ranks of the rank-local metrics (train/ and resrl/ are already
        global); a key only some ranks have (a reward outcome none of the others saw) averages over
        those ranks."""
        lay = self.actor.layout
        if lay.dp == 1:
            return metrics
        from megatron.core import parallel_state as ps

        every: list[dict[str, float]] = [{} for _ in range(lay.dp)]
        dist.all_gather_object(every, metrics, group=ps.get_data_parallel_group())
        out = dict(metrics)
        for k in set().union(*every):
            if k.startswith(("train/", "resrl/")) or k == "step":
                continue
            vals = [d[k] for d in every if k in d]
            out[k] = sum(vals) / len(vals)
        return out
