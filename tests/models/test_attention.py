"""``actor.attention``: the local layer spec's SDPA core attention equals megatron-core's unfused one.

``attention_probe.py`` builds the tiny Qwen3 (GQA: 4 query heads, 2 key-value groups) with each attention
and compares logits, padded and packed log-probs, entropy, the layer-L-2 states the ResRL pass receives,
and the weights after a padded and a packed optimizer step. TP=1 in the development loop; TP=2 and PP=2 in
the slow tier.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

pytestmark = pytest.mark.distributed
TOL = 1e-5


@pytest.mark.parametrize(
    "layout",
    ["tp1", pytest.param("tp2", marks=pytest.mark.slow), pytest.param("pp2", marks=pytest.mark.slow)],
)
def test_sdpa_equals_unfused_attention_padded_packed_states_and_steps(tmp_path, layout):
    make_tiny(tmp_path / "qwen3", "qwen3")
    args = {"tp1": [], "tp2": ["--tp", "2"], "pp2": ["--pp", "2"]}[layout]
    res = run_module(
        "tests.models.attention_probe",
        "--work",
        tmp_path,
        *args,
        nproc=1 if layout == "tp1" else 2,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    for key in ("logits", "logp", "entropy", "logp_packed", "states"):
        assert r[key] < TOL * max(1.0, r["scale"][key]), (key, r)
    # an optimizer step moves these weights by ~1e-2 (lr 1e-2, Adam): the two steps agree far below that
    assert r["weights_padded_step"] < 1e-6 and r["weights_packed_step"] < 1e-6, r
    assert r["multi_document_rows"] >= 3  # packed rows of several documents took the per-document path
    assert r["states_nonzero"] > 0.5  # the ResRL consumer received states for the response tokens


def test_sdpa_attention_takes_document_ids_not_a_dense_mask():
    """The packed micro-batch hands the SDPA attention its document ids with host-made spans equal to
    the runs of the ids; the unfused attention gets the dense block-diagonal mask."""
    from nemo_resrl.models.batch import Sequences, document_spans, make_layout

    g = torch.Generator().manual_seed(0)
    seqs = Sequences([torch.randint(3, 99, (n,), generator=g) for n in (5, 7, 3, 9)], [2, 3, 1, 4])
    layout = make_layout(seqs, 2, pack=True, max_tokens_per_row=16, pad_id=0)
    for mb in layout.micro_batches:
        ids = mb.attention_input("document_ids")
        assert ids.dtype == torch.long and ids.shape == mb.tokens.shape
        assert ids.spans == document_spans(mb.segments)
        assert all(s[0][0] == 0 and s[-1][1] == mb.tokens.shape[1] for s in ids.spans)
        dense = mb.attention_input("dense")
        assert dense.dtype == torch.bool and dense.shape[-2:] == (mb.tokens.shape[1],) * 2
    assert any(len(s) >= 3 for mb in layout.micro_batches for s in mb.spans)
    padded = make_layout(seqs, 2, pad_id=0)
    assert all(mb.attention_input("document_ids") is None for mb in padded.micro_batches)


def test_document_spans_are_the_runs_of_equal_ids():
    from nemo_resrl.models.batch import document_spans

    ids = torch.tensor([[4, 4, 4, 7, 7, -2], [1, 1, 1, 1, 1, 1]])
    assert document_spans(ids) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


def _attention_forward(query, key, value, mask=None):
    """``SDPADotProductAttention.forward`` on an object with only what it reads (no megatron config)."""
    from types import SimpleNamespace

    from nemo_resrl.models.sdpa_attention import SDPADotProductAttention

    heads, d = query.shape[2], query.shape[3]
    me = SimpleNamespace(
        attention_dropout=torch.nn.Dropout(0.0), training=True, sdpa_scale=d**-0.5,
        hidden_size_per_partition=heads * d,
    )  # fmt: skip
    return SDPADotProductAttention.forward(me, query, key, value, mask)


@pytest.mark.parametrize("packed", [False, True])
def test_keys_and_values_repeated_to_every_head_give_the_grouped_result_and_the_planned_bytes(
    monkeypatch, packed
):
    """Where CUDA has no linear-memory kernel for grouped keys and values (float32, head dim > 256) they are
    repeated to every head first: forced here on CPU, the output and gradients equal the grouped call's,
    and what autograd saves grows by exactly the plan's difference, 2 (q - k) bytes per token."""
    import nemo_resrl.models.sdpa_attention as sdpa
    from nemo_resrl.plan.activations import layer_token_bytes
    from nemo_resrl.plan.arch import ModelArch

    s, rows, heads, groups, d = 24, 2, 4, 2, 16
    g = torch.Generator().manual_seed(0)
    # the fused QKV output megatron's attention takes its q, k, v views of
    qkv = torch.randn(s, rows, heads + 2 * groups, d, generator=g, requires_grad=True)
    mask = None
    if packed:
        mask = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])

    def run(expand: bool):
        monkeypatch.setattr(sdpa, "sdpa_expands_kv", lambda **kw: expand)
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        x = qkv * 1.0  # a fresh fused output whose views the attention gets
        q, k, v = x[:, :, :heads], x[:, :, heads : heads + groups], x[:, :, heads + groups :]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = _attention_forward(q, k, v, mask)
        (grad,) = torch.autograd.grad((out * out).sum(), qkv)
        return out.detach(), grad, sum(saved)

    out_g, grad_g, bytes_g = run(False)
    out_e, grad_e, bytes_e = run(True)
    assert torch.allclose(out_e, out_g, atol=1e-6) and torch.allclose(grad_e, grad_g, atol=1e-5)
    q_w, k_w = heads * d, groups * d
    assert bytes_e - bytes_g == 2 * (q_w - k_w) * 4 * rows * s
    arch = ModelArch(
        hidden_size=heads * d, num_layers=1, num_attention_heads=heads, num_key_value_heads=groups,
        head_dim=d, intermediate_size=32, vocab_size=64, qk_layernorm=False, tie_word_embeddings=False,
    )  # fmt: skip
    on_gpu, on_cpu = (layer_token_bytes(arch, tp=1, p=4, seq_len=s, cuda=c) for c in (True, False))
    assert on_gpu - on_cpu == 2 * (q_w - k_w) * 4


def test_keys_and_values_are_repeated_on_cuda_in_float32_or_past_flash_head_dims_only():
    """The one rule the attention and the plan read (``models/sdpa_layout.py``)."""
    from nemo_resrl.models.sdpa_layout import sdpa_expands_kv

    for itemsize in (4, 2):
        for d in (128, 256, 512):
            assert not sdpa_expands_kv(cuda=False, itemsize=itemsize, head_dim=d)
            assert sdpa_expands_kv(cuda=True, itemsize=itemsize, head_dim=d) == (itemsize == 4 or d > 256)
    assert sdpa_expands_kv(cuda=True, itemsize=4, head_dim=128)
    assert not sdpa_expands_kv(cuda=True, itemsize=2, head_dim=128)
