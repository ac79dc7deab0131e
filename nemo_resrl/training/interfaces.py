"""The narrow interfaces the trainer talks to (NeMo RL's ``PolicyInterface`` / ``GenerationInterface``).

The trainer (``trainer.py``) only ever calls these three objects, so its logic (phase order,
dynamic-sampling rounds, data-parallel metric reduction, mini-batches, skipped updates, the LLD
measurement) runs with fakes in tests, in seconds; the Megatron actor (``models/actor.py``), the vLLM
engine (``rollout/engine.py``) and ``TorchDataParallel`` (``data_parallel.py``) implement them for real.

Every call on a policy or an engine is collective over the ranks of the job; every data-parallel call is
collective over the data-parallel group. Tensors cross these interfaces on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch

from nemo_resrl.algorithms.token_batch import PerToken
from nemo_resrl.config.rollout import SamplingConfig
from nemo_resrl.models.batch import LogprobResult, ResRLRequest, Sequences
from nemo_resrl.models.train_step import LossFunction
from nemo_resrl.rollout.batch import RefitStats, RolloutBatch


class PolicyInterface(Protocol):
    """The actor being trained. Log-probs are those of softmax(logits / T) at the sampling temperature T
    (fixed when the policy is built, from ``rollout.sampling.temperature``; the trainer checks it)."""

    temperature: float

    def logprobs(
        self, seqs: Sequences, *, resrl: ResRLRequest | None = None, reference: bool = False
    ) -> LogprobResult:
        """Forward-only pass over this rank's ``seqs`` at the current weights; with ``resrl`` the ResRL
        weights ride on the same pass (groups may span data-parallel ranks); with ``reference`` the
        reference policy's log-probs too (a policy built with one: a KL penalty)."""
        ...

    def train_step(self, seqs: Sequences, batch: PerToken, loss_fn: LossFunction) -> dict[str, float]:
        """One optimizer step on this rank's share: ``batch`` its per-token inputs (response-aligned
        [B, T]), ``loss_fn`` the loss (called per micro-batch, normalised by GLOBAL counts); returns metrics
        identical on every rank (``loss_fn.metric_keys``, grad_norm, lr, update_ok)."""
        ...

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The current weights as (HF name, full tensor) for the rollout engine's refit."""
        ...

    # The colocated memory lifecycle, called in this order every step (NeMo RL's offload_before_refit /
    # offload_after_refit): what each moves is the policy's own configuration (``actor.offload``).
    def prepare_for_logprobs(self) -> None:
        """Before the log-prob pass (the engine is asleep): the parameters are on the device."""
        ...

    def prepare_for_training(self) -> None:
        """Before the updates: the optimizer state and the gradient buffers are on the device."""
        ...

    def prepare_for_refit(self) -> None:
        """After the updates, before the engine wakes: release what training used (optimizer state,
        gradient buffers, cached allocator blocks)."""
        ...

    def finish_refit(self) -> None:
        """After the refit, before the engine's KV cache wakes: release the parameters if configured."""
        ...


class GenerationInterface(Protocol):
    """The rollout engine: samples responses, takes new weights, can free its memory while training."""

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, *, first_index: int = 0
    ) -> RolloutBatch:
        """``sampling.n`` responses per token-id prompt; prompt i samples from a stream seeded by the
        sampling seed and its global index ``first_index + i``."""
        ...

    def refit(self, weights: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        """Load new weights (needs the ``weights`` part awake)."""
        ...

    def sleep(self) -> None:
        """Free the engine's device memory (weights and KV cache) until ``wake_up``."""
        ...

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-allocate ``tags`` (``weights``, ``kv_cache``; None: everything). Generation needs all."""
        ...


class DataParallelInterface(Protocol):
    """This rank's place among the data-parallel replicas, and the two collectives the trainer needs."""

    size: int
    rank: int

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the data-parallel ranks."""
        ...

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        ...


__all__ = [
    "DataParallelInterface",
    "GenerationInterface",
    "LogprobResult",
    "PolicyInterface",
    "ResRLRequest",
    "PerToken",
    "LossFunction",
]
