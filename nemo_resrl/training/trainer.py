"""The RL step, glue only: rollout -> rewards (+ shaping) -> advantages -> old-log-prob pass (+ ResRL
weights, + reference log-probs) -> updates -> refit -> metrics. The math lives in
``nemo_resrl.algorithms``; the trainer talks to a policy, a rollout engine and a data-parallel group
through ``interfaces.py`` only.

With several data-parallel replicas every replica takes its share of the step's prompts (groups stay
whole), generates and grades them, and the policy's passes combine the shares (ResRL groups, global
loss normalisation); metrics are reduced over replicas by kind (``step_metrics.py``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from nemo_resrl.algorithms.advantages import ADVANTAGE_ESTIMATORS, broadcast_to_tokens
from nemo_resrl.algorithms.losses import PolicyLoss, tis_weights
from nemo_resrl.algorithms.resrl import ResponseMeta, positive_set, token_advantages
from nemo_resrl.algorithms.shaping import length_scaled_reward, nonzero_variance_groups, overlong_penalty
from nemo_resrl.algorithms.token_batch import PerToken
from nemo_resrl.config.algorithm import AlgorithmConfig
from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
from nemo_resrl.config.run import RewardConfig, TrainerConfig
from nemo_resrl.models.batch import Sequences
from nemo_resrl.rewards.base import REASONS, RewardResult
from nemo_resrl.rollout.batch import RolloutBatch, check_consistency, concat_rollouts, token_mult_prob_error
from nemo_resrl.training.interfaces import (
    DataParallelInterface,
    GenerationInterface,
    PolicyInterface,
    ResRLRequest,
)
from nemo_resrl.training.phases import Phases
from nemo_resrl.training.step_metrics import StepMetrics, reduce_over_ranks

log = logging.getLogger(__name__)

WEIGHT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # logged as weights/negative_p10 ... _p90


# grades a rollout against its prompts' records: rewards [N], verdicts [N], outcome counts
RewardFn = Callable[[RolloutBatch, Sequence[dict]], RewardResult]
# a step's extra prompts for dynamic-sampling round r >= 1 (a function of step and round: resume-safe)
RefillFn = Callable[[int, int], Sequence[dict]]


@dataclass
class StepBatch:
    """The responses a step trains on (this rank's share): rollout, rewards [N], correct [N], global
    group ids [N]."""

    rollout: RolloutBatch
    rewards: torch.Tensor
    correct: torch.Tensor
    group_ids: torch.Tensor


class Trainer:
    """Runs RL steps; see the module docstring.

    ``refill(step, round)`` gives the extra prompts of dynamic-sampling rounds; ``on_phase(label)`` is
    told each phase as it starts (progress display); ``reward`` sets the value of an incorrect response and
    the reward shaping (default: the grader's rewards as they are).
    """

    def __init__(
        self,
        policy: PolicyInterface,
        engine: GenerationInterface,
        reward_fn: RewardFn,
        *,
        algorithm: AlgorithmConfig,
        trainer: TrainerConfig,
        rollout: RolloutConfig,
        dp: DataParallelInterface,
        reward: RewardConfig | None = None,
        refill: RefillFn | None = None,
        on_phase: Callable[[str], None] | None = None,
    ):
        self.policy, self.engine, self.reward_fn, self.dp = policy, engine, reward_fn, dp
        # derived values (Dr.GRPO's constant, DAPO's overlong buffer): a no-op for a loaded RunConfig
        algorithm = algorithm.resolve(rollout.sampling.max_tokens)
        self.algo, self.cfg, self.rollout_cfg = algorithm, trainer, rollout
        self.reward_cfg = reward or RewardConfig()
        self.spec = algorithm.spec
        self.loss_cfg = algorithm.loss
        self.loss = PolicyLoss(algorithm.loss)
        self.refill = refill
        self.on_phase = on_phase
        if float(policy.temperature) != float(rollout.sampling.temperature):
            raise ValueError(
                f"the policy's log-probs are at temperature {policy.temperature} but "
                f"rollout.sampling.temperature is {rollout.sampling.temperature}: build the policy with the "
                "sampling temperature"
            )
        if algorithm.dynamic_sampling.enabled and refill is None:
            raise ValueError("algorithm.dynamic_sampling needs a refill function for its extra rounds")
        self.step = 0

    # ------------------------------------------------------------------ rollout
    def _share(self, records: Sequence[dict]) -> tuple[list[dict], int]:
        """This data-parallel rank's prompts of the step, and the global index of the first one."""
        n = len(records)
        per = -(-n // self.dp.size)
        start = min(n, self.dp.rank * per)
        return list(records[start : start + per]), start

    def sampling_for(self, step: int, round_: int) -> SamplingConfig:
        """The sampling settings of generation round ``round_`` of ``step``: a fresh, reproducible stream
        per step and round (a resumed run repeats it)."""
        sampling = self.rollout_cfg.sampling
        if sampling.seed is not None:
            salt = 7919 * (self.cfg.seed + 1) * (step + 1) + 104_729 * round_
            sampling = replace(sampling, seed=(sampling.seed + salt) % (1 << 30))
        return sampling

    def _round(
        self, records: Sequence[dict], round_: int, phases: Phases
    ) -> tuple[RolloutBatch, RewardResult, torch.Tensor, torch.Tensor]:
        """Generate and grade this rank's share of ``records``: (rollout, graded, rewards [N] after
        ``reward.incorrect`` and ``reward.shaping``, global group ids [N])."""
        n, size = len(records), self.dp.size
        if (size - 1) * -(-n // size) >= n:  # the last rank's share would be empty: every rank raises
            raise ValueError(
                f"{n} prompts cannot be shared by {size} data-parallel ranks (each takes ceil({n} / {size})):"
                " make trainer.prompts_per_step a multiple of the data-parallel size"
            )
        local, first = self._share(records)
        with phases("generate", "generate" if round_ == 0 else f"generate (round {round_ + 1})"):
            self.engine.wake_up()
            rollout = self.engine.generate(
                [r["prompt_ids"] for r in local], self.sampling_for(self.step, round_), first_index=first
            )
        with phases("reward"):
            graded = self.reward_fn(rollout, local)
        group_ids = rollout.prompt_index + first + round_ * len(records)
        return rollout, graded, self._shaped(graded, rollout.lengths), group_ids

    def _shaped(self, graded: RewardResult, lengths: torch.Tensor) -> torch.Tensor:
        """The rewards the advantages see [N] float32: an incorrect response's replaced by
        ``reward.incorrect`` (when set), then the length scale on the positive ones (docs/algorithm.md §7)."""
        cfg = self.reward_cfg
        rewards = graded.rewards.float()
        if cfg.incorrect is not None:
            rewards = torch.where(graded.correct.bool(), rewards, torch.full_like(rewards, cfg.incorrect))
        if cfg.shaping == "length_scaled":
            ls = cfg.length_scale
            rewards = length_scaled_reward(rewards, lengths, ls.start, ls.max_length, ls.end_scale)
        return rewards

    def _rollout(self, records: Sequence[dict], phases: Phases, m: StepMetrics) -> StepBatch | None:
        """The step's responses; with dynamic sampling only groups with reward variance, over up to
        ``max_rounds`` rounds (None when this rank kept none). Reward metrics cover EVERY generated
        response."""
        ds = self.algo.dynamic_sampling
        kept: list[StepBatch] = []
        generated: list[tuple[RewardResult, torch.Tensor]] = []  # (graded, rewards) of every round
        target, kept_global, dropped_global = len(records), 0, 0
        rounds = ds.max_rounds if ds.enabled else 1
        for r in range(rounds):
            batch = records if r == 0 else self.refill(self.step, r)  # type: ignore[misc]
            rollout, graded, rewards, gids = self._round(batch, r, phases)
            generated.append((graded, rewards))
            if not ds.enabled:
                kept.append(StepBatch(rollout, rewards, graded.correct, gids))
                break
            keep = nonzero_variance_groups(rewards, gids)
            n_groups = len(set(gids.tolist()))
            n_kept = len(set(gids[keep].tolist()))
            if n_kept:
                idx = keep.nonzero().flatten()
                sub = rollout.subset(idx)
                kept.append(StepBatch(sub, rewards[idx], graded.correct[idx], gids[idx]))
            local_kept = sum(len(set(b.group_ids.tolist())) for b in kept)
            k, d, ranks_empty = self.dp.sum([n_kept, n_groups - n_kept, float(local_kept == 0)])
            kept_global, dropped_global = kept_global + k, dropped_global + d
            if kept_global >= target and ranks_empty == 0:
                break
        self._reward_metrics(generated, m)
        if ds.enabled:
            m.replicated(
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
        if not kept:
            return None
        return StepBatch(
            concat_rollouts([b.rollout for b in kept]),
            torch.cat([b.rewards for b in kept]),
            torch.cat([b.correct for b in kept]),
            torch.cat([b.group_ids for b in kept]),
        )

    @staticmethod
    def _reward_metrics(generated: Sequence[tuple[RewardResult, torch.Tensor]], m: StepMetrics) -> None:
        """Over every generated response of this rank: counts (summed over ranks) and means (weighted by
        the responses); ``reward/mean`` is of the rewards the advantages see (after shaping)."""
        counts: collections.Counter = collections.Counter()
        for g, _ in generated:
            counts.update(g.counts)
        rewards = torch.cat([r for _, r in generated]).float()
        correct = torch.cat([g.correct for g, _ in generated])
        n = float(rewards.numel())
        m.sum({"reward/n": n})
        m.sum({f"reward/count/{r}": float(counts.get(r, 0)) for r in sorted(set(REASONS) | set(counts))})
        if n:
            m.weighted(
                {"reward/mean": float(rewards.mean()), "reward/accuracy": float(correct.float().mean())}, n
            )

    # ------------------------------------------------------------------ the step
    def train_step(self, records: Sequence[dict]) -> dict[str, float]:
        """One RL step on ``records`` (each with ``prompt_ids``: list[int], plus what the reward needs);
        returns the step's metrics, reduced over data-parallel ranks."""
        phases = Phases(self.on_phase)
        m = StepMetrics()
        m.replicated({"step": float(self.step)})
        batch = self._rollout(records, phases, m)
        if self.dp.sum([float(batch is None)])[0] > 0:  # dynamic sampling left a rank without any group
            log.warning("step %d: a data-parallel rank kept no group with reward variance", self.step)
            m.replicated({"train/update_skipped": 1.0})
            return self._finish(m, phases)
        rollout, n_per = batch.rollout, self.rollout_cfg.sampling.n
        response_ids = batch.group_ids * n_per + torch.arange(len(rollout)) % n_per
        shaped = batch.rewards.float()
        ol = self.algo.overlong
        if ol.enabled:
            penalty = overlong_penalty(
                rollout.lengths, self.rollout_cfg.sampling.max_tokens, ol.buffer, ol.factor
            )
            shaped = shaped + penalty
            m.weighted({"reward/overlong_penalty_mean": float(penalty.mean())}, weight=len(rollout))
        adv = ADVANTAGE_ESTIMATORS.get(self.spec.estimator)(
            shaped, batch.correct, batch.group_ids, self.algo.advantage
        )
        trained = trained_responses(self.spec.trains_on, batch.correct)
        seqs = rollout.to_sequences()
        kl = self.loss_cfg.kl_coef > 0
        label = (
            "old log-probs" + (" + ResRL" if self.spec.resrl_weights else "") + (" + reference" if kl else "")
        )
        with phases("old_logprobs", label):
            self.engine.sleep()  # the engine's memory goes to the actor from here until the refit
            self.policy.prepare_for_logprobs()
            request, positive = None, None
            if self.spec.resrl_weights:
                positive = positive_set(adv, batch.correct, self.algo.resrl.positive_set)
                meta = ResponseMeta(
                    group_ids=batch.group_ids, response_ids=response_ids, advantages=adv, positive=positive
                )
                request = ResRLRequest(meta=meta, cfg=self.algo.resrl, step=self.step)
            old = self.policy.logprobs(seqs, resrl=request, reference=kl)
            mask = old.outputs.mask
            if old.weights is not None:
                token_adv = token_advantages(adv, old.weights, self.algo.resrl.lambda_pos, positive) * mask
                m.replicated(old.stats.as_metrics())
                m.mean(negative_weight_metrics(old.weights, mask, adv, positive))
            else:
                token_adv = broadcast_to_tokens(adv, mask)
            if kl and old.ref_logprobs is None:
                raise RuntimeError(
                    "algorithm.loss.kl_coef > 0 but the policy returned no reference log-probs"
                )
        sampler_logp = rollout.response_logprobs()
        consistency = token_mult_prob_error(sampler_logp, old.outputs.logprobs, mask)
        check_consistency(consistency, self.rollout_cfg, self.step)
        is_weights = None
        if self.loss_cfg.tis_cap is not None:
            is_weights = tis_weights(old.outputs.logprobs, sampler_logp, self.loss_cfg.tis_cap)
            m.mean(tis_metrics(is_weights, mask & trained[:, None], self.loss_cfg.tis_cap))
        with phases("train"):
            self.policy.prepare_for_training()
            per_token = PerToken(old.outputs.logprobs, token_adv, mask, old.ref_logprobs, is_weights)
            update = self._updates(seqs, per_token, trained)
        every = self.cfg.lld_every
        if every and self.step % every == 0:
            with phases("lld", "log-likelihood displacement"):
                m.replicated(self._positive_lld(seqs, old.outputs.logprobs, mask, batch.correct))
        with phases("refit"):
            refit = self._refit()
        m.replicated({f"train/{k}": v for k, v in update.items()})
        m.replicated({"train/update_skipped": float(update.get("updates", 0.0) == 0)})
        m.mean(
            {
                "response/length_mean": float(rollout.lengths.float().mean()),
                "response/truncated_frac": float(rollout.truncated.float().mean()),
                "rollout/token_mult_prob_error": consistency,
                "refit/bytes": float(refit.bytes),
            }
        )
        m.weighted({"train/trained_frac": float(trained.float().mean())}, weight=len(rollout))
        return self._finish(m, phases)

    @contextlib.contextmanager
    def engine_asleep(self) -> Iterator[None]:
        """For a checkpoint save: the engine's memory is free while every part of the actor's state is back
        on the device; afterwards the colocated refit sequence brings the engine back (with its weights,
        whatever its sleep level dropped)."""
        self.engine.sleep()
        try:
            yield
        finally:
            self._refit()

    def _refit(self):
        """The colocated refit, in NeMo RL's order: release what training held, wake the engine's weights
        only, stream the new weights in, release the parameters if configured, then wake the KV cache."""
        self.policy.prepare_for_refit()
        self.engine.wake_up(["weights"])
        stats = self.engine.refit(self.policy.export_weights())
        self.policy.finish_refit()
        self.engine.wake_up(["kv_cache"])
        return stats

    def _finish(self, m: StepMetrics, phases: Phases) -> dict[str, float]:
        m.mean(phases.metrics())
        m.max(phases.peak_metrics())
        self.step += 1
        return reduce_over_ranks(self.dp.all_gather(m))

    def _updates(self, seqs: Sequences, per_token: PerToken, trained: torch.Tensor) -> dict[str, float]:
        """``trainer.mini_batches`` optimizer updates over the step's TRAINED responses (all, or the
        subset a PSR / NSR recipe trains on: its loss is normalised over those alone, as the reference
        code's ``batch.subset``); metrics averaged over the updates made. An update whose mini-batch holds
        no valid token on any data-parallel rank is skipped by every rank (no optimizer step)."""
        parts = update_parts(trained, self.cfg.mini_batches)
        valid = [float((per_token.mask[idx] & keep[:, None]).sum()) for idx, keep in parts]
        valid = self.dp.sum(valid)
        acc: dict[str, float] = {}
        done = 0
        for (idx, keep), n_valid in zip(parts, valid):
            if n_valid == 0:
                continue
            i = idx.tolist()
            sub = Sequences([seqs.tokens[j] for j in i], [seqs.prompt_lens[j] for j in i])
            width = max(sub.response_lens)
            cut = per_token.rows(idx, width)
            out = self.policy.train_step(sub, cut.masked(keep[:, None]), self.loss)
            done += 1
            for k, v in out.items():
                acc[k] = acc.get(k, 0.0) + v
        out = {k: v / done for k, v in acc.items()}
        out["updates"] = float(done)
        return out

    def _positive_lld(self, seqs: Sequences, old_logp, mask, correct: torch.Tensor) -> dict[str, float]:
        """Mean change of log pi(y+ | c) over the step's correct responses, after minus before the step's
        updates (sequence sums and per token), over all data-parallel ranks."""
        pos = correct.nonzero().flatten().tolist()
        total = n_tok = 0.0  # sum over the positives' tokens of (new - old) log-prob, and their count
        # a policy call is collective over the job (with expert parallelism the MoE layers exchange tokens
        # across data-parallel ranks): a rank without positives still runs one, on a row it then ignores
        run = pos or [0]
        sub = Sequences([seqs.tokens[i] for i in run], [seqs.prompt_lens[i] for i in run])
        new = self.policy.logprobs(sub).outputs
        if pos:
            width = new.logprobs.shape[1]
            delta = (new.logprobs - old_logp[pos, :width]) * mask[pos, :width]
            total, n_tok = float(delta.sum()), float(mask[pos, :width].sum())
        total, n_seq, n_tok = self.dp.sum([total, float(len(pos)), n_tok])
        if n_seq == 0:
            return {"lld/positives": 0.0}
        return {
            "lld/positives": n_seq,
            "lld/seq_logp_delta_mean": total / n_seq,  # the mean change of log pi(y+ | c)
            "lld/token_logp_delta_mean": total / max(n_tok, 1.0),
        }

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, records: Sequence[dict]) -> dict[str, float]:
        """Greedy (one response per prompt) accuracy on ``records``, over all data-parallel ranks."""
        local, _ = self._share(records)
        greedy = replace(self.rollout_cfg.sampling, n=1, temperature=0.0, seed=None)
        self.engine.wake_up()
        rollout = self.engine.generate([r["prompt_ids"] for r in local], greedy)
        graded = self.reward_fn(rollout, local)
        total, correct, length, n = self.dp.sum(
            [
                float(graded.rewards.sum()),
                float(graded.correct.sum()),
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


def trained_responses(trains_on: str, correct: torch.Tensor) -> torch.Tensor:
    """[N] bool: the responses a recipe's loss covers: ``all``, or only the ``correct`` (PSR) or
    ``incorrect`` (NSR) ones (docs/algorithm.md §8)."""
    if trains_on == "all":
        return torch.ones_like(correct, dtype=torch.bool)
    if trains_on == "correct":
        return correct.bool().clone()
    if trains_on == "incorrect":
        return ~correct.bool()
    raise ValueError(f"trains_on must be all, correct or incorrect, got {trains_on!r}")


def update_parts(trained: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``k`` mini-batches of one step: (row indices, keep [rows] bool) each. The trained rows are split
    into ``k`` consecutive parts of near-equal size (``tensor_split``); a part left without rows gets one
    untrained row with keep=False (or row 0 with keep=False) so that every data-parallel rank makes the same
    number of collective calls; ``keep`` False rows carry no loss."""
    rows = trained.nonzero().flatten()
    spare = (~trained).nonzero().flatten()
    filler = int(spare[0]) if spare.numel() else 0
    parts = []
    for idx in rows.tensor_split(k):
        if idx.numel():
            parts.append((idx, torch.ones(idx.numel(), dtype=torch.bool)))
        else:
            parts.append((torch.tensor([filler]), torch.zeros(1, dtype=torch.bool)))
    return parts


def tis_metrics(is_weights: torch.Tensor, mask: torch.Tensor, cap: float) -> dict[str, float]:
    """Mean truncated importance-sampling weight over this rank's trained tokens, and the share at the cap;
    NaN when there is none."""
    w = is_weights[mask.bool()].float()
    if not w.numel():
        return {"tis/weight_mean": float("nan"), "tis/capped_frac": float("nan")}
    return {"tis/weight_mean": float(w.mean()), "tis/capped_frac": float((w >= cap).float().mean())}


def negative_weight_metrics(
    weights: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, positive: torch.Tensor | None = None
) -> dict[str, float]:
    """The distribution of the ResRL weights of this rank's negative tokens (not positive, A < 0): mean and
    the ``WEIGHT_QUANTILES`` (``nemo-resrl plot`` draws them as bands); NaN when there is none."""
    pos = adv > 0 if positive is None else positive.bool()
    w = weights[mask.bool() & (~pos & (adv < 0))[:, None]].float()
    out = {"weights/negative_mean": float(w.mean()) if w.numel() else float("nan")}
    qs = w.quantile(torch.tensor(WEIGHT_QUANTILES)) if w.numel() else None
    for i, q in enumerate(WEIGHT_QUANTILES):
        out[f"weights/negative_p{round(q * 100)}"] = float(qs[i]) if qs is not None else float("nan")
    return out
