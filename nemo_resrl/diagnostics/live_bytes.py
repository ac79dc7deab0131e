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

A storage released while tensors still view it (``untyped_storage().resize_(0)``, how code frees memory
a collective's worker may still reference) stops counting at the next operator.

A tensor may die in another thread (a collective's or autograd's worker drops the last reference), and
its finalizer then runs there: the counters are updated under a lock, or a ``live -= n`` racing a
``live += m`` could be lost and the peak overstated (seen under load, by exactly one freed tensor).
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._paused = False
        self._lock = threading.RLock()  # re-entrant: a finalizer may run inside _track (a collection)
        self._next = 0
        # one entry per counted storage: id -> [tensors viewing it, bytes counted, weak ref to one view,
        # its data pointer]; the pointer of a storage still counted -> its id
        self._entries: dict[int, list] = {}
        self._by_ptr: dict[int, int] = {}

    def _drop_released(self) -> None:
        """Stop counting storages resized to 0 bytes while tensors still view them (their pointer may be
        handed out again: it no longer names them)."""
        for entry in list(self._entries.values()):
            t = entry[2]()
            if entry[1] and t is not None and t.untyped_storage().nbytes() == 0:
                self.live -= entry[1]
                entry[1] = 0
                self._by_ptr.pop(entry[3], None)

    def _release(self, eid: int) -> None:
        with self._lock:
            entry = self._entries[eid]
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self._entries[eid]
                if self._by_ptr.get(entry[3]) == eid:
                    del self._by_ptr[entry[3]]

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        with self._lock:
            self._drop_released()
            eid = self._by_ptr.get(ptr)
            if eid is None:
                # in place on, or a view of, a tensor from outside the block; an empty or paused allocation
                if self._paused or st.nbytes() == 0 or ptr in inputs:
                    return
                eid, self._next = self._next, self._next + 1
                self._entries[eid] = [0, st.nbytes(), weakref.ref(t), ptr]
                self._by_ptr[ptr] = eid
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
            self._entries[eid][0] += 1
        weakref.finalize(t, self._release, eid)

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
