"""Workaround for megatron-core 0.16.1's mixture-of-experts router without TransformerEngine.

``megatron/core/transformer/moe/moe_utils.py`` imports ``te_general_gemm`` inside ``try: ... except
ImportError`` and, without TE, never defines the name; ``RouterGatingLinearFunction`` then tests
``te_general_gemm is not None`` first and raises ``NameError`` on the first forward pass of any MoE
layer, whatever the router dtype. Defining the name as None selects megatron's own torch path
(``torch.mm`` in the router dtype), which is what the module means when TE is missing. Applied whenever
TE is absent, on CPU and GPU alike. ``tests/compat/test_moe_patches.py`` shows the NameError without it.
"""

from __future__ import annotations


def install() -> bool:
    """Define ``moe_utils.te_general_gemm = None`` when TE left it undefined; returns whether it did."""
    from megatron.core.transformer.moe import moe_utils

    if hasattr(moe_utils, "te_general_gemm"):
        return False
    moe_utils.te_general_gemm = None
    return True
