"""Activation memory of the actor: what one decoder layer keeps for the backward pass per token, the
forward-only working set, and the log-prob layer's logits and float32 chunks.

Local layer spec (megatron-core's torch layers, the CPU stack; derived by listing what autograd saves
in each operation and checked against ``torch.autograd.graph.saved_tensors_hooks`` in
tests/plan/test_activations.py). Per token of one layer, with h = hidden, q = heads x head_dim / tp,
k = kv heads x head_dim / tp, a = heads / tp, g = kv heads / tp, f = ffn / tp, d = head_dim, s = the
sequence length, p = bytes of the actor dtype:

    each RMSNorm of width w over r rows:  8w + 4r + p w   (a float32 copy of its input, 1 / rms per row,
                                           the float32 normalised value, the output a linear layer saves)
    input and pre-MLP norms:              2 (8h + 4 + p h)
    Qwen3's q / k norms (no output saved: rotary embedding saves none): 8q + 4a  and  8k + 4g
    (float32 models save the whole fused QKV output for the k norm: 4 (q + 2k) instead of 4k)
    rotary cos / sin for q and k:         4 d p  (per position: shared by a micro-batch's rows)
    attention, unfused: q, k and v expanded to every head, softmax output: 3 q p + a s p
    attention, sdpa: q, k, a copy of v, the float32 log-sum-exp: (q + 2k) p + 4a (its output, in the
                                           query's layout, is the output projection's input: no S term);
                                           on CUDA in float32 or with d > 256, k and v repeated to every
                                           head (no linear-memory kernel takes grouped ones there): 3q p + 4a
    output projection input:              q p
    MLP: fc1 output (gate and up), SwiGLU's three saved values: 2 f p + 3 f p
    mixture of experts (E experts, k per token, expert FFN f_e, instead of the MLP): each of a token's
    k expert copies keeps its permuted input and its SwiGLU values, (k / ep) (h + 5 f_e / etp) p on one
    rank with balanced routing; the un-permutation keeps the experts' output h p; the float64 router its
    probabilities over E and the top-k values, normalised values, indices and their sum: 8 E + 8 (3 k + 1)

TransformerEngine spec (GPU; flash attention keeps q, k, v, its output and a float32 log-sum-exp, no
s x s term; the layer norms are fused into the linears): estimated the same way, not measured.
Full recomputation keeps only each layer's input (h p) and recomputes one layer at a time.
"""

from __future__ import annotations

from nemo_resrl.models.sdpa_layout import sdpa_expands_kv
from nemo_resrl.plan.arch import ModelArch

FP32 = 4


def _norm(width: int, rows: int, p: int) -> int:
    return 8 * width + FP32 * rows + p * width


def moe_token_bytes(arch: ModelArch, *, p: int, ep: int = 1, etp: int = 1) -> int:
    """A mixture-of-experts MLP's saves per token (module docstring); measured exactly at ep = etp = 1."""
    h, e, k, f = arch.hidden_size, arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size // etp
    return k * (h + 5 * f) * p // ep + h * p + 8 * e + 8 * (3 * k + 1)


def layer_token_bytes(
    arch: ModelArch,
    *,
    tp: int,
    p: int,
    seq_len: int,
    spec: str = "local",
    attention: str = "sdpa",
    ep: int = 1,
    etp: int | None = None,
    cuda: bool = False,
) -> int:
    """Bytes one decoder layer saves for backward per token of a sequence of ``seq_len`` tokens;
    ``attention``: the local spec's core attention (sdpa | unfused, ``actor.attention``); ``cuda``: on a
    GPU (the SDPA kernels differ: module docstring)."""
    h, d = arch.hidden_size, arch.head_dim
    a, g = arch.num_attention_heads // tp, arch.num_key_value_heads // tp
    q, k, f = a * d, g * d, arch.intermediate_size // tp
    etp = tp if etp is None else etp
    if spec == "te":
        ln = p * h + FP32  # the input of a fused layer-norm linear and its 1 / rms
        qk = (p * q + FP32 * a + p * k + FP32 * g) if arch.qk_layernorm else 0
        attention = p * (q + 2 * k) + p * q + FP32 * a  # q, k, v, output (= projection input), lse
        mlp = p * h + 2 * f * p + f * p  # fc1 input (the norm's output), fc1 output, fc2 input
        if arch.is_moe:
            mlp = p * h + moe_token_bytes(arch, p=p, ep=ep, etp=etp)
        return 2 * ln + qk + attention + mlp
    total = 2 * _norm(h, 1, p)
    if arch.qk_layernorm:
        k_input = FP32 * (q + 2 * k) if p == FP32 else FP32 * k
        total += 8 * q + FP32 * a + k_input + FP32 * g + FP32 * k
    total += 4 * d * p  # rotary cos / sin
    if attention == "unfused":
        total += 3 * q * p + a * seq_len * p
    elif g < a and sdpa_expands_kv(cuda=cuda, itemsize=p, head_dim=d):
        total += 3 * q * p + FP32 * a
    else:
        total += (q + 2 * k) * p + FP32 * a
    total += q * p  # output projection input
    total += moe_token_bytes(arch, p=p, ep=ep, etp=etp) if arch.is_moe else 2 * f * p + 3 * f * p  # MLP
    return total


def layer_input_bytes(arch: ModelArch, *, p: int) -> int:
    """Bytes per token a fully recomputed layer keeps: its input."""
    return arch.hidden_size * p


def logits_bytes(arch: ModelArch, *, tp: int, p: int, tokens: int) -> int:
    """The output layer's logits of ``tokens`` tokens, this rank's vocabulary shard (kept for backward by
    the log-prob layer; also its gradient in the backward pass)."""
    return tokens * (arch.vocab_size // tp) * p


def logprob_chunk_bytes(arch: ModelArch, *, tp: int, chunk_rows: int) -> int:
    """The float32 temporaries of the chunked log-softmax: two [chunk_rows, V / tp] tensors."""
    return 2 * chunk_rows * (arch.vocab_size // tp) * FP32


def forward_working_bytes(
    arch: ModelArch,
    *,
    tp: int,
    p: int,
    tokens: int,
    seq_len: int,
    spec: str,
    attention: str = "sdpa",
    ep: int = 1,
    etp: int | None = None,
    cuda: bool = False,
) -> int:
    """The largest set of temporaries of a forward-only pass over ``tokens`` tokens: one layer's values
    (nothing is kept between layers) plus the residual stream in and out."""
    per_layer = layer_token_bytes(
        arch, tp=tp, p=p, seq_len=seq_len, spec=spec, attention=attention, ep=ep, etp=etp, cuda=cuda
    )
    return tokens * (per_layer + 2 * arch.hidden_size * p)
