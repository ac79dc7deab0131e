"""Patches that let megatron-core (0.16.x) run on a CPU-only torch with gloo.

Apply with ``install()`` after ``torch.distributed.init_process_group("gloo")`` and before building a
model or seeding megatron's RNG tracker. Only for processes that use no GPU: ``nemo_resrl.compat``
calls it only then. Each part fixes a failure that ``tests/compat/test_cpu_patches.py`` reproduces:

``device``   ``torch.cuda.current_device()`` -> "cpu" (GlobalMemoryBuffer, TP mappings, p2p and rope
             allocate on it).
``sync``     ``torch.cuda.synchronize`` -> no-op (pipeline p2p communication calls it).
``mode``     a process-wide TorchFunctionMode: factory calls with ``device="cuda"`` go to the CPU (the
             pipeline schedule hard-codes ``torch.zeros([], device="cuda")``), ``Tensor.cuda()`` and
             ``pin_memory`` are no-ops, and ``Tensor.type()`` reports ``torch.cuda.*`` (grad clipping
             asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``).
``rng``      megatron's CUDA RNG-states tracker -> an equivalent one over the CPU generator (its ``add``
             calls ``torch.cuda.get_rng_state``).
``recompute`` the CUDA RNG state that activation recomputation saves and restores around each
             recomputed layer -> the CPU generator's (``CheckpointFunction`` calls
             ``torch.cuda.get_rng_state``; the CPU state it saves besides is the real one).

Not included, because the CPU stack (megatron-core 0.16.1) does not need it: megatron-core >= 0.19's DDP
also calls ``torch.cuda.current_stream()`` (a CPU machine moved to 0.19 needs a patch for it too).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

PARTS = ("device", "sync", "mode", "rng", "recompute")

_FACTORIES = {
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.tensor,
    torch.empty_like,
    torch.zeros_like,
    torch.ones_like,
    torch.full_like,
    torch.as_tensor,
    torch.linspace,
    torch.empty_strided,
    torch.eye,
}

_installed: set[str] = set()
_mode: TorchFunctionMode | None = None


def _is_cuda(dev: object) -> bool:
    if isinstance(dev, bool):
        return False
    if isinstance(dev, int):
        return True
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, torch.device) and dev.type == "cuda"


class CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA placements in torch calls to the CPU (see the module docstring, part ``mode``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.pin_memory or func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if func in _FACTORIES and _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        elif func is torch.Tensor.to:
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            if len(args) > 1 and _is_cuda(args[1]):
                args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _install_cpu_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """megatron's tracker of named RNG states, over the CPU generator."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def install(parts: tuple[str, ...] = PARTS) -> None:
    """Apply the named parts (default: all). Idempotent; process-wide."""
    global _mode
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown megatron CPU patch parts {sorted(unknown)}; known: {PARTS}")
    for part in parts:
        if part in _installed:
            continue
        if part == "device":
            torch.cuda.current_device = lambda: "cpu"
        elif part == "sync":
            torch.cuda.synchronize = lambda *a, **k: None
        elif part == "mode":
            _mode = CudaToCpuMode()
            _mode.__enter__()  # stays active for the rest of the process
        elif part == "rng":
            _install_cpu_rng_tracker()
        elif part == "recompute":
            from megatron.core.tensor_parallel import random as mrandom

            mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
            mrandom._set_cuda_rng_state = lambda *a, **k: None
        _installed.add(part)
