"""Core attention of the local layer spec through ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the [rows, heads, S, S] scores (and keeps the
softmax of them for backward: ``heads x S`` bytes per token and layer, 2.1 GB per layer at 8k tokens for
a 32-head model in bf16); a packed micro-batch also needs a dense [rows, 1, S, S] mask. This module keeps
megatron's constructor, parameters and state dict (it is a subclass) and replaces the forward:

- padded rows (no mask): one causal SDPA call over [rows, heads, S, head_dim]; the padding tail comes
  after every real token, so causal attention is exact for them.
- packed rows: the mask argument is the micro-batch's document ids, int64 [rows, S] (what
  ``MicroBatch.attention_input("sdpa")`` passes instead of a bool [rows, 1, S, S] mask), and every
  document of every row gets its own causal SDPA call: block-diagonal causal attention, no S x S tensor.
  The documents' spans are read from the host-made ``spans`` attribute of that tensor when it has one
  (no device synchronisation), else from the ids themselves (one per micro-batch, cached).

On a GPU SDPA picks the flash or memory-efficient kernel (causal, no mask, bf16): what it keeps for
backward is q, k, v, its output and a float32 log-sum-exp, linear in S (on CPU measured in
tests/plan/test_activations.py; value is copied first, so that the fused QKV output it is a view of can
be freed). GQA: keys and values keep their
``num_query_groups`` heads (``enable_gqa``), not repeated to every query head, except on CUDA where no
linear-memory kernel takes ``enable_gqa`` for the input (float32, or a head dimension over 256: flash and
cuDNN take neither, the memory-efficient kernel refuses ``enable_gqa``) and torch would fall back to the
S x S math kernel: there k and v are repeated to every head first (``models/sdpa_layout.py``, the rule the
plan counts them by).
Shapes (megatron's): query [S, rows, heads/tp, d], key / value [S, rows, groups/tp, d]
-> [S, rows, heads/tp x d].
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention

from nemo_resrl.models.batch import document_spans
from nemo_resrl.models.sdpa_layout import sdpa_expands_kv

# the last document-id tensor seen and its spans (every layer of a micro-batch gets the same tensor)
_last_spans: tuple[weakref.ref, list[list[tuple[int, int]]]] | None = None


def spans_of(doc_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """The spans of ``doc_ids``: its ``spans`` attribute (made on the host with the ids), else computed once
    per tensor (module docstring)."""
    global _last_spans
    spans = getattr(doc_ids, "spans", None)
    if spans is not None:
        return spans
    if _last_spans is not None and _last_spans[0]() is doc_ids:
        return _last_spans[1]
    spans = document_spans(doc_ids)
    _last_spans = (weakref.ref(doc_ids), spans)
    return spans


class SDPADotProductAttention(DotProductAttention):
    """megatron's local core attention with SDPA's kernels (module docstring)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, *args, **kwargs) -> None:
        super().__init__(config, layer_number, attn_mask_type, attention_type, *args, **kwargs)
        if self.scale_mask_softmax.window_size is not None:
            raise ValueError("actor.attention sdpa: sliding-window attention is not supported; use unfused")
        if self.softmax_offset is not None or config.softmax_type != "vanilla":
            raise ValueError(f"actor.attention sdpa: softmax_type {config.softmax_type} is not supported")
        # megatron divides the scale by the layer number and multiplies the scores back in its softmax
        coeff = self.layer_number if config.apply_query_key_layer_scaling else 1
        self.sdpa_scale = self.softmax_scale * coeff

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type=None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("actor.attention sdpa: packed_seq_params and attention_bias are not supported")
        s, rows = query.shape[0], query.shape[1]
        gqa = query.shape[2] != key.shape[2]
        expand = gqa and sdpa_expands_kv(
            cuda=query.is_cuda, itemsize=query.element_size(), head_dim=query.shape[-1]
        )
        if not expand:
            # value is a view of the fused QKV projection's output: saved as it is, it would keep all of
            # that output, (q + 2k) x bytes per token, alive until backward; a copy keeps k x bytes
            value = value.contiguous()
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [rows, heads, S, d]
        if expand:  # new tensors (the fused output is not kept through them) of every query head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            gqa = False
        p = self.attention_dropout.p if self.training else 0.0
        kw = {"dropout_p": p, "scale": self.sdpa_scale, "enable_gqa": gqa}
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
        else:
            if attention_mask.dtype != torch.long or attention_mask.dim() != 2:
                raise ValueError(
                    "actor.attention sdpa takes the micro-batch's document ids int64 [rows, S] as its mask, "
                    f"got {attention_mask.dtype} {tuple(attention_mask.shape)} (a dense mask is unfused's)"
                )
            spans = spans_of(attention_mask)
            out = torch.stack(
                [
                    torch.cat(
                        [
                            F.scaled_dot_product_attention(
                                q[r, None, :, a:b],
                                k[r, None, :, a:b],
                                v[r, None, :, a:b],
                                is_causal=True,
                                **kw,
                            )
                            for a, b in spans[r]
                        ],
                        dim=2,
                    )[0]
                    for r in range(rows)
                ]
            )
        # [rows, heads, S, d] -> [S, rows, heads x d]
        return out.permute(2, 0, 1, 3).reshape(s, rows, self.hidden_size_per_partition)
