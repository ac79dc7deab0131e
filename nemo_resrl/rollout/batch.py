"""What a rollout produces, and how it is compared with the actor: plain data, no vLLM.

``RolloutBatch`` holds the responses of one generation call in (prompt, sample) order;
``token_mult_prob_error`` is the sampler-vs-actor consistency metric of every step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemo_resrl.common import require
from nemo_resrl.config.rollout import RolloutConfig
from nemo_resrl.models.batch import Sequences

log = logging.getLogger(__name__)


@dataclass
class RolloutBatch:
    """``len(prompts) * n`` responses in (prompt, sample) order.

    prompt_index [N] int64; responses: token ids (EOS included when it stopped there);
    logprobs: the sampler's log-prob of each response token (vLLM's processed log-probs: the
    distribution it sampled from, after temperature, top-k and top-p); truncated [N] bool: hit the
    token budget instead of stopping; lengths [N] int64.
    """

    prompts: list[list[int]]
    prompt_index: torch.Tensor
    responses: list[list[int]]
    logprobs: list[torch.Tensor]
    truncated: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.responses)

    def to_sequences(self) -> Sequences:
        """Prompt + response token ids, for the actor."""
        toks = [
            torch.tensor(self.prompts[int(p)] + r, dtype=torch.long)
            for p, r in zip(self.prompt_index, self.responses)
        ]
        return Sequences(toks, [len(self.prompts[int(p)]) for p in self.prompt_index])

    def subset(self, index: torch.Tensor) -> RolloutBatch:
        """The responses at ``index`` (in that order), keeping only the prompts they answer."""
        idx = [int(i) for i in index]
        used = sorted({int(self.prompt_index[i]) for i in idx})
        remap = {p: k for k, p in enumerate(used)}
        return RolloutBatch(
            prompts=[self.prompts[p] for p in used],
            prompt_index=torch.tensor([remap[int(self.prompt_index[i])] for i in idx], dtype=torch.long),
            responses=[self.responses[i] for i in idx],
            logprobs=[self.logprobs[i] for i in idx],
            truncated=self.truncated[idx],
            lengths=self.lengths[idx],
        )

    def response_logprobs(self) -> torch.Tensor:
        """Sampler log-probs, response-aligned [N, T] (0 at padding)."""
        width = max((len(x) for x in self.logprobs), default=0)
        out = torch.zeros(len(self), width)
        for i, lp in enumerate(self.logprobs):
            out[i, : lp.numel()] = lp
        return out


def concat_rollouts(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """One batch holding every response of ``batches`` in order (prompt indices shifted)."""
    prompts, index, offset = [], [], 0
    for b in batches:
        prompts += b.prompts
        index.append(b.prompt_index + offset)
        offset += len(b.prompts)
    return RolloutBatch(
        prompts=prompts,
        prompt_index=torch.cat(index),
        responses=[r for b in batches for r in b.responses],
        logprobs=[lp for b in batches for lp in b.logprobs],
        truncated=torch.cat([b.truncated for b in batches]),
        lengths=torch.cat([b.lengths for b in batches]),
    )


@dataclass
class RefitStats:
    tensors: int
    bytes: int
    calls: int  # reload_weights calls (one: see ``RolloutEngine.refit``)
    seconds: float


def token_mult_prob_error(rollout_logp: torch.Tensor, actor_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over valid tokens of ``exp(|logp_vllm - logp_actor|)`` (NeMo RL's ``token_mult_prob_error``):
    1.0 when the sampler and the actor agree exactly. All [N, T]; 1.0 when no token is valid."""
    require(rollout_logp.shape == actor_logp.shape == mask.shape, "log-prob and mask shapes differ")
    m = mask.bool()
    if not bool(m.any()):
        return 1.0
    return float(torch.exp((rollout_logp.float() - actor_logp.float()).abs())[m].mean())


class RolloutMismatchError(RuntimeError):
    """The rollout engine's log-probs disagree with the actor's beyond ``rollout.consistency_error``."""


def check_consistency(value: float, cfg: RolloutConfig, step: int) -> bool:
    """Warn when the refit consistency metric exceeds ``rollout.consistency_warn``; raise
    ``RolloutMismatchError`` above ``rollout.consistency_error``."""
    if cfg.consistency_error is not None and value > cfg.consistency_error:
        raise RolloutMismatchError(
            f"step {step}: token_mult_prob_error {value:.4f} > rollout.consistency_error "
            f"{cfg.consistency_error}: the rollout engine samples from another policy than the actor trains "
            "(a stale or partial refit, a weight layout the engine did not re-process, a dtype or sampler "
            "setting the actor ignores); rollout.consistency_error=null lets the run go on"
        )
    if value > cfg.consistency_warn:
        log.warning(
            "step %d: token_mult_prob_error %.4f > rollout.consistency_warn %.4f: the rollout engine and the "
            "actor disagree (stale or partial refit, dtype mismatch, or a sampler setting the actor ignores)",
            step,
            value,
            cfg.consistency_warn,
        )
        return False
    return True
