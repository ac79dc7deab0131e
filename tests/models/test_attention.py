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
