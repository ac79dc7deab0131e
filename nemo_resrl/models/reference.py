"""The reference policy of a KL penalty: a frozen copy of the actor's initial weights, in the same parallel
layout (each rank keeps its own shards), kept in host memory (pinned on a GPU machine) and swapped with
the model's weights only for the reference log-prob pass, right after the old-log-prob pass. The swap goes
tensor by tensor through one device temporary, so the device holds one set of weights (plus one tensor)
and the host one copy of this rank's shards; the cost is two swaps per step (measured on the CPU default
in docs/benchmarks.md).

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
        self.capture()

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.host)

    @torch.no_grad()
    def capture(self) -> None:
        """Take the model's current weights as the reference."""
        for h, p in zip(self.host, self.params):
            h.copy_(p.detach())

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the model's weights and the host copy, one tensor at a time."""
        for h, p in zip(self.host, self.params):
            own = p.detach().clone()
            p.detach().copy_(h)
            h.copy_(own)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside, the model holds the reference weights; its own come back after (bit for bit)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def load_with(self, load_into_model: Callable[[], None]) -> None:
        """Make the weights ``load_into_model()`` puts into the model the reference, keeping the model's
        own weights."""
        with self.swapped_in():  # the host holds the model's own weights meanwhile
            load_into_model()
