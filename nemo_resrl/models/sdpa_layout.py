"""Which layout the SDPA attention hands grouped keys and values to ``scaled_dot_product_attention`` in:
one rule, read by the attention (``models/sdpa_attention.py``) and by the memory plan
(``plan/activations.py``), so the two cannot disagree. No torch or megatron import: the planner is pure.

On CUDA no linear-memory kernel takes grouped keys and values (``enable_gqa``) for a float32 input or a
head dimension over 256 (flash and cuDNN take neither, the memory-efficient kernel refuses ``enable_gqa``):
torch would fall back to the math kernel, which materialises the S x S scores. There the keys and values
are repeated to every query head first. Elsewhere (CPU; CUDA in bf16 / fp16 with head dimension <= 256)
they keep their ``num_query_groups`` heads.
"""

from __future__ import annotations

FP32_BYTES = 4
FLASH_MAX_HEAD_DIM = 256


def sdpa_expands_kv(*, cuda: bool, itemsize: int, head_dim: int) -> bool:
    """Whether grouped keys and values are repeated to every query head before SDPA (module docstring);
    ``itemsize``: bytes per element of the attention's input (4: float32)."""
    return cuda and (itemsize == FP32_BYTES or head_dim > FLASH_MAX_HEAD_DIM)
