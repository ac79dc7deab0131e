"""Every patch the CPU path needs, and nothing else.

``apply_cpu_patches()`` is called by the actor when its process uses no GPU: it patches megatron-core
for CPU (``megatron_cpu``) and gloo's scatter (``gloo``). ``import_megatron_bridge()`` imports
megatron-bridge with a scoped TransformerEngine stub when TE is missing (``te_stub``). On a GPU none
of the CPU patches is applied.
"""

from __future__ import annotations

import torch

from nemo_resrl.compat.te_stub import import_megatron_bridge, transformer_engine_available


def running_on_cpu() -> bool:
    """True when this process has no usable CUDA device."""
    return not torch.cuda.is_available()


def apply_cpu_patches() -> bool:
    """Apply every CPU patch if this process has no GPU; returns whether they were applied."""
    if not running_on_cpu():
        return False
    from nemo_resrl.compat import gloo, megatron_cpu

    megatron_cpu.install()
    gloo.install_contiguous_scatter()
    return True


__all__ = ["apply_cpu_patches", "import_megatron_bridge", "running_on_cpu", "transformer_engine_available"]
