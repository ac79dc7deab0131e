"""Moving the actor's memory off its device while the colocated rollout engine needs it, and back.

``StorageOffload`` works on tensor storages: ``offload()`` copies each storage to host memory (pinned on
a GPU machine) and frees it with ``resize_(0)``, so every tensor that views it (megatron's parameters and
``main_grad`` views into its contiguous buffers) stays a valid object; ``onload()`` re-allocates and copies
back. Gradient buffers are only freed and come back zeroed (every train step zeroes them first). The same
code runs on CPU, where the "host copy" is a second CPU buffer: a CPU run exercises exactly the GPU path
(megatron-core 0.16's own ``offload_to_cpu`` would lose CPU parameters: its host copy is ``.cpu()``, the
same storage it then frees).

``ActorMemory`` applies ``actor.offload`` to a built model and its optimizer: parameters, gradient
buffers, optimizer state (Adam moments and fp32 master weights that are not the parameters themselves).
"""

from __future__ import annotations

import gc

import torch

from nemo_resrl.config.actor import OffloadConfig


def release_cached_memory() -> None:
    """``gc.collect()``, then return the CUDA caching allocator's free blocks to the driver (a colocated
    vLLM allocates through its own allocator and cannot use PyTorch's cache)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _storage_key(st: torch.UntypedStorage) -> tuple[str, int]:
    return (str(st.device), st.data_ptr())


class StorageOffload:
    """The distinct storages of ``tensors`` (see the module docstring). ``keep=False``: the contents are not
    kept (gradient buffers): ``onload`` gives zeros."""

    def __init__(self, tensors: list[torch.Tensor], *, keep: bool = True, exclude: set | None = None) -> None:
        self.keep = keep
        self.storages: list[torch.UntypedStorage] = []
        seen = set(exclude or ())
        for t in tensors:
            st = t.untyped_storage()
            key = _storage_key(st)
            if st.nbytes() > 0 and key not in seen:
                seen.add(key)
                self.storages.append(st)
        self.sizes = [st.nbytes() for st in self.storages]
        self.host: list[torch.Tensor | None] = [None] * len(self.storages)
        self.offloaded = False

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def keys(self) -> set:
        return {_storage_key(st) for st in self.storages}

    def offload(self) -> None:
        if self.offloaded:
            return
        pin = torch.cuda.is_available()
        for i, st in enumerate(self.storages):
            if self.keep:
                if self.host[i] is None:
                    self.host[i] = torch.empty(self.sizes[i], dtype=torch.uint8, pin_memory=pin)
                self.host[i].untyped_storage().copy_(st)
            st.resize_(0)
        self.offloaded = True

    def onload(self) -> None:
        if not self.offloaded:
            return
        for i, st in enumerate(self.storages):
            st.resize_(self.sizes[i])
            if self.keep:
                st.copy_(self.host[i].untyped_storage())
            else:
                torch.empty(0, dtype=torch.uint8, device=st.device).set_(st).zero_()
        self.offloaded = False

    def resident_bytes(self) -> int:
        """Bytes these storages hold on their device now (0 while offloaded)."""
        return sum(st.nbytes() for st in self.storages)


def _optimizer_tensors(optimizer) -> list[torch.Tensor]:
    """Every tensor of a megatron optimizer's inner torch optimizers: their parameters (the fp32 master
    weights, or views of the model's parameters) and their state (Adam moments, step)."""
    out = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        out += [p for g in inner.param_groups for p in g["params"]]
        out += [v for st in inner.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


class ActorMemory:
    """``actor.offload`` for a built model (``chunks``: DDP-wrapped modules) and its optimizer."""

    def __init__(self, cfg: OffloadConfig, chunks: list, optimizer) -> None:
        self.cfg, self.chunks, self.optimizer = cfg, chunks, optimizer
        params = [p for c in chunks for p in c.parameters()]
        self.params = StorageOffload(params)
        grads = [b.grad_data for c in chunks for b in (c.buffers + c.expert_parallel_buffers)]
        self.grads = StorageOffload(grads, keep=False)
        self._model_keys = self.params.keys() | self.grads.keys()  # taken while everything is resident
        self._optim: StorageOffload | None = None
        self._optim_tensors = -1

    def _optimizer_part(self) -> StorageOffload:
        # (re)built when the optimizer's tensors change: Adam's state appears at the first step. Master
        # weights that are views of the parameters (fp32 training) stay with the parameters.
        tensors = _optimizer_tensors(self.optimizer)
        if self._optim is None or len(tensors) != self._optim_tensors:
            self._optim = StorageOffload(tensors, exclude=self._model_keys)
            self._optim_tensors = len(tensors)
        return self._optim

    def after_training(self) -> None:
        """Before the refit: the optimizer state and the gradient buffers go, as configured."""
        if self.cfg.optimizer:
            self._optimizer_part().offload()
        if self.cfg.grads:
            self.grads.offload()
        release_cached_memory()

    def after_refit(self) -> None:
        """After the refit: the parameters go, as configured (the engine generates meanwhile)."""
        if self.cfg.params:
            self.params.offload()
        release_cached_memory()

    def before_forward(self) -> None:
        """Before the log-prob pass: the parameters come back."""
        self.params.onload()

    def before_training(self) -> None:
        """Before the optimizer step: everything comes back."""
        self.params.onload()
        self.grads.onload()
        if self._optim is not None:
            self._optim.onload()
