"""Mark tensor-parallel-split parameters as such (megatron-core leaves them unmarked here).

megatron-core (0.16) sets ``tensor_model_parallel`` / ``partition_dim`` on the weights of its parallel
layers only inside its weight INITIALISERS, which it skips when ``perform_initialization`` is False. The
bridge turns initialisation off because it loads the Hugging Face weights instead, so every parameter
ends up marked as replicated. Then the gradient-norm (and so gradient clipping) counts only tensor
rank 0's shard of each split weight: at TP=2 the norm came out about 1/sqrt(2) of the true one and
the clipped update differed from TP=1's. ``mark_tensor_parallel_params`` restores the attributes from
the layer types, for the local layers and any layer that declares a ``parallel_mode``.

Shapes: a column-parallel weight [out / tp, in] and bias [out / tp] split along dim 0; a row-parallel
weight [out, in / tp] along dim 1 (its bias is replicated); a vocab-parallel embedding [V / tp, d]
along dim 0.
"""

from __future__ import annotations

import torch


def _mark(p: torch.nn.Parameter | None, dim: int) -> bool:
    if not isinstance(p, torch.nn.Parameter) or getattr(p, "tensor_model_parallel", False):
        return False
    p.tensor_model_parallel = True
    p.partition_dim = dim
    p.partition_stride = 1
    return True


def mark_tensor_parallel_params(model: torch.nn.Module, tp_size: int) -> int:
    """Set the tensor-parallel attributes of split parameters in ``model``; returns how many were set."""
    if tp_size <= 1:
        return 0
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    marked = 0
    for mod in model.modules():
        mode = getattr(mod, "parallel_mode", None)
        if isinstance(mod, ColumnParallelLinear | VocabParallelEmbedding) or mode == "column":
            marked += _mark(getattr(mod, "weight", None), 0) + _mark(getattr(mod, "bias", None), 0)
        elif isinstance(mod, RowParallelLinear) or mode == "row":
            marked += _mark(getattr(mod, "weight", None), 1)
    return marked
