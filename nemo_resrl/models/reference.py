"""The reference policy of a KL penalty: a frozen copy of the actor's initial weights, in the same parallel
layout (each rank keeps its own shards), kept in host memory (pinned on a GPU machine) and swapped into
the model only for the reference log-prob pass, right after the old-log-prob pass. Device memory holds one
set of weights at a time; the cost is two host copies of this rank's parameters per step (measured on the
CPU default in docs/benchmarks.md).

Checkpoints save it (a model-only dist-checkpoint in ``actor/reference/``) so that a resume restores the
same reference, not whatever the HF directory holds by then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


class ReferenceWeights:
    """A host copy of ``params`` (this rank's parameter tensors) taken at construction."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        pin = torch.cuda.is_available()
        self.host = [torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for p in params]
        self.scratch = [torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for p in params]
        self.capture()

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.host)

    @torch.no_grad()
    def capture(self) -> None:
        """Take the model's current weights as the reference."""
        for h, p in zip(self.host, self.params):
            h.copy_(p.detach())

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside, the model holds the reference weights; its own come back after (bit for bit)."""
        for s, p in zip(self.scratch, self.params):
            s.copy_(p.detach())
        try:
            for h, p in zip(self.host, self.params):
                p.detach().copy_(h)
            yield
        finally:
            for s, p in zip(self.scratch, self.params):
                p.detach().copy_(s)

    @torch.no_grad()
    def load_with(self, load_into_model: Callable[[], None]) -> None:
        """Make the weights ``load_into_model()`` puts into the model the reference, keeping the model's
        own weights."""
        for s, p in zip(self.scratch, self.params):
            s.copy_(p.detach())
        try:
            load_into_model()
            self.capture()
        finally:
            for s, p in zip(self.scratch, self.params):
                p.detach().copy_(s)
