"""What one optimizer step trains on, per token, and the global counts its loss is normalised by.

``PerToken`` is the trainer's per-token batch, response-aligned [B, T] (column t is response token t of
row b): the old log-probs, the token advantages (ResRL-weighted on negative tokens), the loss mask, and
the optional reference log-probs (a KL penalty) and truncated importance-sampling weights. The policy's
``train_step`` takes it together with a loss object (``nemo_resrl.algorithms.losses.PolicyLoss``), so the
actor moves rows and micro-batches without knowing which loss it computes (NeMo RL's
``policy.train(data, loss_fn)``).

``GlobalCounts`` are the loss's denominators summed over ALL micro-batches and data-parallel ranks of the
step (``local_counts`` of each part, added up): the one normalisation the losses divide by.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class GlobalCounts:
    """Denominators of the loss: valid tokens and sequences with at least one valid token, summed over
    ALL micro-batches and data-parallel ranks of the optimizer step."""

    tokens: float
    sequences: float


def local_counts(mask: torch.Tensor) -> GlobalCounts:
    """Counts of one micro-batch [B, T]; sum these over micro-batches and ranks to get the global ones."""
    m = mask.bool()
    return GlobalCounts(tokens=float(m.sum()), sequences=float(m.any(dim=-1).sum()))


@dataclass
class PerToken:
    """The step's per-token training inputs, response-aligned [B, T]; ``mask`` is bool (the tokens the
    loss covers), the optional tensors are None when the recipe does not use them."""

    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    ref_logprobs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None

    def _map(self, fn) -> PerToken:
        return PerToken(
            **{f.name: (None if (t := getattr(self, f.name)) is None else fn(t)) for f in fields(self)}
        )

    def check_shape(self, shape: tuple[int, int]) -> None:
        """``ValueError`` naming the tensor that is not [B, T] = ``shape``."""
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None and tuple(t.shape) != tuple(shape):
                raise ValueError(
                    f"{f.name} must be response-aligned [B, T] = {tuple(shape)}, got {tuple(t.shape)}"
                )

    def rows(self, idx: torch.Tensor, width: int) -> PerToken:
        """Rows ``idx``, the first ``width`` columns."""
        out = self._map(lambda t: t[idx, :width])
        out.mask = out.mask.bool()
        return out

    def masked(self, keep: torch.Tensor) -> PerToken:
        """The same batch with ``mask`` restricted to ``keep`` (bool, broadcastable to [B, T])."""
        return PerToken(
            self.old_logprobs, self.advantages, self.mask.bool() & keep, self.ref_logprobs, self.is_weights
        )

    def to(self, device: torch.device | str) -> PerToken:
        """Floating tensors as float32 on ``device``, the mask as bool."""
        out = self._map(lambda t: t.to(device=device, dtype=torch.float32))
        out.mask = self.mask.to(device=device, dtype=torch.bool)
        return out
