"""Peak bytes of the tensors a block of code allocates, on any device (CPU included, where torch keeps no
allocator statistics): what the planner's transient terms are tested against.

    with LiveBytes() as lb:
        run()
    lb.peak      # most bytes live at once among the storages created inside the block
    lb.live      # bytes of those storages still alive at the end

A ``TorchDispatchMode`` sees every operator's outputs; a storage counts from the first output that holds
it until the last tensor viewing it is garbage. Allocations made inside a kernel (LAPACK or cuSOLVER
workspaces, a matmul's scratch) and by the collectives' transports are not operator outputs and are not
counted. ``pause()`` stops counting new storages (those already counted are still followed until freed).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage key -> live tensors viewing it
        self._bytes: dict[int, int] = {}
        self._paused = False

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.live -= self._bytes.pop(key)
            del self._refs[key]

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in self._refs:
            # in place on, or a view of, a tensor from outside the block; an empty or paused allocation
            if self._paused or st.nbytes() == 0 or key in inputs:
                return
            self._refs[key] = 0
            self._bytes[key] = st.nbytes()
            self.live += st.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            self._key(t)
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
                self._track(t, inputs)
        return out

    @contextlib.contextmanager
    def pause(self):
        """Do not count storages created inside (they are someone else's)."""
        old, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = old
