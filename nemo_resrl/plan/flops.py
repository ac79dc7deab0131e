"""FLOPs of the step's passes (causal attention; a mixture of experts counts the experts a token uses).

Per token, a forward pass costs ``2 N`` for the matrix multiplications (N: the weights of every linear
layer and the output layer; the embedding lookup costs nothing) plus ``4 L q c`` for attention (QK^T and
the weighted sum of V, each ``2 q c`` per layer, q = heads x head_dim, c the number of positions the token
attends to: (S + 1) / 2 on average over a causal sequence of S tokens). Training is three forward passes
(forward, and a backward twice as costly), four with full recomputation.
"""

from __future__ import annotations

from nemo_resrl.plan.arch import ModelArch


def matmul_params(arch: ModelArch) -> int:
    """Weights of every matrix multiplication of a forward pass (the output layer included, tied or not;
    mixture of experts: the router and the experts_per_token experts a token goes through)."""
    h = arch.hidden_size
    per_layer = h * (arch.q_dim + 2 * arch.kv_dim) + arch.q_dim * h + arch.active_mlp_params
    return arch.num_layers * per_layer + arch.vocab_size * h


def forward_flops_per_token(arch: ModelArch, seq_len: int) -> float:
    """Average forward FLOPs per token of a causal sequence of ``seq_len`` tokens."""
    context = (seq_len + 1) / 2
    return 2 * matmul_params(arch) + 4 * arch.num_layers * arch.q_dim * context


def train_flops_per_token(arch: ModelArch, seq_len: int, *, recompute: bool = False) -> float:
    return (4 if recompute else 3) * forward_flops_per_token(arch, seq_len)
