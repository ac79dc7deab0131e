"""Sequence parallelism with megatron-core's local (torch) layer spec (megatron-core 0.16.1).

``WrappedTorchNorm`` (``megatron/core/transformer/torch_norm.py``), the norm of the local spec, asserts
``not config.sequence_parallel``. The only thing a norm must do differently under sequence parallelism is
have its weight's gradient summed over the tensor-parallel ranks (each rank normalises a different slice
of the sequence), which megatron's ``finalize_model_grads`` does for every parameter marked
``sequence_parallel = True``: TE's and Apex's norms set that attribute themselves. ``install()`` builds
the torch norm as usual and marks its parameters the same way. Needed by mixture-of-experts models under
tensor parallelism (megatron-core requires sequence parallelism there) on CPU and on GPUs without
TransformerEngine. ``tests/compat/test_moe_patches.py`` shows the assertion without it and the marked
weights with it; ``tests/models/test_moe.py`` (a TP=2 step equal to TP=1's) shows the gradient sum.
"""

from __future__ import annotations

_installed = False


def install() -> None:
    """Let ``WrappedTorchNorm`` build under sequence parallelism, marking its weights (idempotent)."""
    global _installed
    if _installed:
        return
    from megatron.core.transformer import torch_norm

    original = torch_norm.WrappedTorchNorm.__new__

    def __new__(cls, config, hidden_size, *args, **kwargs):
        sp = config.sequence_parallel
        config.sequence_parallel = False  # only for megatron's assertion; restored below
        try:
            norm = original(cls, config, hidden_size, *args, **kwargs)
        finally:
            config.sequence_parallel = sp
        for p in norm.parameters():
            p.sequence_parallel = sp
        return norm

    torch_norm.WrappedTorchNorm.__new__ = __new__
    _installed = True
