"""The colocated rollout engine's device memory: its weights, its KV cache and how many sequences that
cache holds, and what stays on the device while it sleeps.

``rollout.engine: transformers`` (``hf_engine_memory``): a whole copy of the weights (tensor parallel 1)
and, while it generates, the larger of: the prompt pass (its KV cache, one layer's temporaries, the
[rows, 1, W, W] boolean padding mask) and the last step (the KV cache of all its prompts x n rows at full
length, where a ``DynamicCache`` growing by concatenation holds one layer's keys twice, and the
sampling step's temporaries over the vocabulary). Compared with what generation allocates on CPU in
tests/plan/test_rollout.py.

vLLM (V1) takes ``gpu_memory_utilization x device memory`` for itself: the weights, the peak activations
of its profiling run, non-torch memory and CUDA graphs, and gives the rest to the KV cache. At start it
refuses to run unless that much is free, so in a colocated job the actor's memory at that moment (and
at every wake-up) must fit in the remaining fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_resrl.plan.arch import ModelArch

FP32 = 4
GIB = 1 << 30
# vLLM defaults the estimate assumes (the engine leaves them at vLLM's defaults)
MAX_NUM_BATCHED_TOKENS = 8192  # tokens of one scheduler step (chunked prefill)
MAX_NUM_SEQS = 256
CUDA_GRAPHS_BYTES = 1 * GIB  # the captured graphs' memory pool (0 with enforce_eager): an assumption


def weight_bytes(arch: ModelArch, *, tp: int, p: int) -> int:
    """The engine's weights on one tensor rank (embedding and output layer split by vocabulary)."""
    h = arch.hidden_size
    emb = arch.vocab_size * h // tp
    out = 0 if arch.tie_word_embeddings else emb
    if arch.is_moe:  # the router replicated, every expert's FFN split over the tensor ranks
        e = arch.num_experts
        mlp = e * h + e * 3 * h * (arch.moe_intermediate_size // tp)
    else:
        mlp = 3 * h * arch.intermediate_size // tp
    layers = arch.num_layers * ((arch.q_dim + 2 * arch.kv_dim) * h // tp + arch.q_dim * h // tp + mlp)
    norms = arch.num_layers * (2 * h + (2 * arch.head_dim if arch.qk_layernorm else 0)) + h
    bias = arch.num_layers * (arch.q_dim + 2 * arch.kv_dim) // tp if arch.qkv_bias else 0
    return (emb + out + layers + norms + bias) * p


def kv_bytes_per_token(arch: ModelArch, *, tp: int, p: int) -> int:
    """Keys and values of one token in every layer, on one tensor rank (vLLM's full-attention page size
    divided by its block size, times the layers)."""
    return arch.num_layers * 2 * max(1, arch.num_key_value_heads // tp) * arch.head_dim * p


def profile_activation_bytes(arch: ModelArch, *, tp: int, p: int) -> int:
    """vLLM's profiling-run peak: one scheduler step of MAX_NUM_BATCHED_TOKENS tokens through a layer (the
    residual stream, QKV, the MLP's gate / up), plus float32 logits of MAX_NUM_SEQS sampled positions."""
    h, f = arch.hidden_size, arch.intermediate_size // tp
    if arch.is_moe:  # each token's experts_per_token expert copies
        f = arch.experts_per_token * arch.moe_intermediate_size // tp
    per_token = p * (4 * h + (arch.q_dim + 2 * arch.kv_dim) // tp + 3 * f)
    return MAX_NUM_BATCHED_TOKENS * per_token + MAX_NUM_SEQS * (arch.vocab_size // tp) * FP32


def hf_engine_memory(arch: ModelArch, *, p: int, rows: int, prompt_len: int, max_tokens: int) -> EngineMemory:
    """The transformers engine generating ``rows`` sequences of ``prompt_len`` + ``max_tokens`` tokens at
    once (module docstring)."""
    h, f, v = arch.hidden_size, arch.intermediate_size, arch.vocab_size
    if arch.is_moe:
        f = arch.experts_per_token * arch.moe_intermediate_size
    seq = prompt_len + max_tokens
    kv_per_token = kv_bytes_per_token(arch, tp=1, p=p)
    kv = rows * seq * kv_per_token
    # growing by concatenation, the keys (then the values) of one layer exist twice for a moment
    kv += rows * seq * kv_per_token // (2 * max(1, arch.num_layers))
    # the prompt pass: its cache, one layer's temporaries, the padding mask
    prefill = rows * prompt_len * (kv_per_token + p * (4 * h + arch.q_dim + 2 * arch.kv_dim + 3 * f))
    prefill += rows * prompt_len**2
    # the last step: the whole cache, the logits in the model dtype, float32 logits, tempered, sorted,
    # their order (int64), probabilities
    last = kv + rows * v * (p + 4 * FP32 + 8)
    act = max(prefill, last) - kv
    weights = weight_bytes(arch, tp=1, p=p)
    return EngineMemory(
        budget=weights + kv + act,
        weights=weights,
        activations=act,
        graphs=0,
        kv_cache=kv,
        kv_per_token=kv_per_token,
        max_model_len=seq,
        name="transformers engine",
    )


@dataclass(frozen=True)
class EngineMemory:
    budget: int  # gpu_memory_utilization x device memory
    weights: int
    activations: int
    graphs: int
    kv_cache: int
    kv_per_token: int
    max_model_len: int
    name: str = "vLLM"

    @property
    def kv_tokens(self) -> int:
        return self.kv_cache // self.kv_per_token if self.kv_per_token else 0

    @property
    def sequences(self) -> float:
        """Sequences of max_model_len tokens the KV cache holds at once."""
        return self.kv_tokens / self.max_model_len


def engine_memory(
    arch: ModelArch,
    *,
    tp: int,
    p: int,
    device_bytes: int,
    utilization: float,
    max_model_len: int,
    cuda_graphs: bool,
) -> EngineMemory:
    budget = int(utilization * device_bytes)
    weights = weight_bytes(arch, tp=tp, p=p)
    act = profile_activation_bytes(arch, tp=tp, p=p)
    graphs = CUDA_GRAPHS_BYTES if cuda_graphs else 0
    return EngineMemory(
        budget=budget,
        weights=weights,
        activations=act,
        graphs=graphs,
        kv_cache=max(0, budget - weights - act - graphs),
        kv_per_token=kv_bytes_per_token(arch, tp=tp, p=p),
        max_model_len=max_model_len,
    )
