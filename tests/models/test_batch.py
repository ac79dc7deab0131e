"""Micro-batch layout: where each response token's output comes from, padded and packed."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.models.batch import Sequences, _first_fit, make_layout


def _seqs():
    g = torch.Generator().manual_seed(0)
    lens, prompts = [5, 3, 7, 4, 6], [2, 1, 3, 4, 1]
    return Sequences([torch.randint(1, 50, (n,), generator=g) for n in lens], prompts)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("mbs", [1, 2, 3])
def test_every_response_token_is_mapped_once_to_the_position_that_predicts_it(pack, mbs, uniform):
    seqs = _seqs()
    layout = make_layout(seqs, mbs, pack=pack, max_tokens_per_row=10, uniform_shape=uniform)
    seen = []
    for mb in layout.micro_batches:
        if uniform:
            assert mb.tokens.shape == (layout.rows, layout.seq_len)
        flat_tokens = mb.tokens.reshape(-1)
        flat_labels = mb.labels.reshape(-1)
        for f, s, r in zip(mb.flat_pos.tolist(), mb.seq_index.tolist(), mb.resp_pos.tolist()):
            p = seqs.prompt_lens[s]
            # the logits at f predict response token r of sequence s ...
            assert flat_labels[f] == seqs.tokens[s][p + r]
            # ... and position f holds the token just before it
            assert flat_tokens[f] == seqs.tokens[s][p + r - 1]
            seen.append((s, r))
    expected = [(s, r) for s in range(len(seqs)) for r in range(seqs.response_lens[s])]
    assert sorted(seen) == sorted(expected)
    assert layout.width == max(seqs.response_lens)


def test_packed_mask_is_block_diagonal_causal():
    seqs = _seqs()
    layout = make_layout(seqs, 1, pack=True, max_tokens_per_row=10)
    assert len(layout.micro_batches) < len(seqs)  # something was packed together
    for mb in layout.micro_batches:
        allowed = ~mb.attention_mask()[0, 0]
        (row, start), *_ = [mb.placement[i] for i in mb.seq_ids.tolist()]
        for i in mb.seq_ids.tolist():
            r, off = mb.placement[i]
            n = seqs.tokens[i].numel()
            block = allowed[off : off + n, off : off + n]
            assert torch.equal(block, torch.ones(n, n, dtype=torch.bool).tril())
            # nothing outside its own block
            assert allowed[off : off + n].sum() == block.sum()
        assert allowed.any(dim=-1).all()  # padding rows still attend to themselves


def test_a_packed_micro_batch_holds_no_s_by_s_tensor_on_the_host():
    """The block mask is made on the device from [rows, S] segment ids: what a packed layout holds grows
    linearly with the row length, not with its square."""
    from nemo_resrl.models.batch import Sequences

    def host_bytes(seq_len: int) -> int:
        g = torch.Generator().manual_seed(0)
        n = seq_len // 4
        seqs = Sequences([torch.randint(3, 99, (n,), generator=g) for _ in range(8)], [2] * 8)
        layout = make_layout(seqs, 2, pack=True, max_tokens_per_row=seq_len)
        return sum(
            t.numel() * t.element_size()
            for mb in layout.micro_batches
            for t in vars(mb).values()
            if isinstance(t, torch.Tensor)
        )

    small, large = host_bytes(256), host_bytes(2048)
    assert large <= 8 * small * 1.1  # 8x the tokens: 8x the bytes (an S x S mask would be 64x)


def test_padded_layout_uses_causal_default_and_same_shape_for_all_micro_batches():
    layout = make_layout(_seqs(), 2)
    assert all(mb.attention_mask() is None for mb in layout.micro_batches)
    assert len(layout.micro_batches) == 3  # 5 sequences, 2 rows each: the last one gets a filler row
    assert layout.micro_batches[-1].seq_ids.tolist() == [4]


def test_non_uniform_layout_sorts_longest_first_without_filler_rows():
    seqs = _seqs()  # lengths 5, 3, 7, 4, 6
    layout = make_layout(seqs, 2, uniform_shape=False)
    assert [mb.seq_ids.tolist() for mb in layout.micro_batches] == [[2, 4], [0, 3], [1]]
    assert [tuple(mb.tokens.shape) for mb in layout.micro_batches] == [(2, 7), (2, 5), (1, 3)]
    assert layout.seq_len == 7


def test_first_fit_respects_capacity_and_keeps_everything():
    lengths = [7, 3, 5, 2, 9, 1]
    bins = _first_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)


def test_bad_sequences_are_rejected_with_their_index():
    with pytest.raises(ValueError, match="sequence 1: prompt length 0"):
        Sequences([torch.tensor([1, 2]), torch.tensor([3])], [1, 0])
    with pytest.raises(ValueError, match="sequence 0: tokens must be integer"):
        Sequences([torch.tensor([1.0, 2.0])], [1])
    seqs = Sequences([torch.tensor([1, 2]), torch.tensor([3, 300])], [1, 1])
    with pytest.raises(ValueError, match="sequence 1: token id 300 outside the vocabulary"):
        seqs.check_vocab(256)
    with pytest.raises(ValueError, match="does not fit in max_tokens_per_row=4"):
        make_layout(Sequences([torch.arange(6)], [1]), 1, pack=True, max_tokens_per_row=4)


@pytest.mark.parametrize("uniform", [False, True])
def test_phases_come_in_order_and_each_micro_batch_says_which_are_complete(uniform):
    seqs = Sequences([torch.arange(1, 3 + i) for i in range(7)], [1] * 7)
    phases = [1, 0, 1, 0, 1, 1, 0]  # sequences 1, 3, 6 first
    lay = make_layout(seqs, 2, uniform_shape=uniform, phases=phases)
    where = {int(i): j for j, mb in enumerate(lay.micro_batches) for i in mb.seq_ids}
    assert sorted(where) == list(range(7))
    assert max(where[i] for i in (1, 3, 6)) <= min(where[i] for i in (0, 2, 4, 5))
    # phase 0 ends in the second micro-batch (which also starts phase 1); phase 1 in the last
    assert [mb.phases_done for mb in lay.micro_batches] == [0, 1, 1, 2]
    assert lay.phase_rows == (3, 4)


def test_phase_aligned_layout_ends_each_phase_at_the_given_micro_batch():
    """Expert parallelism: a rank with fewer positives still finishes phase 0 where the others do."""
    seqs = Sequences([torch.arange(1, 4 + i) for i in range(5)], [1] * 5)
    lay = make_layout(seqs, 2, phases=[0, 1, 1, 1, 1], phase_micro_batches=[3, 2])
    assert len(lay.micro_batches) == 5
    assert [mb.seq_ids.tolist() for mb in lay.micro_batches] == [[0], [], [], [1, 2], [3, 4]]
    assert [mb.phases_done for mb in lay.micro_batches] == [0, 0, 1, 1, 2]
    assert {mb.tokens.shape for mb in lay.micro_batches} == {(2, 7)}
    none = make_layout(seqs, 2, phases=[1] * 5, phase_micro_batches=[0, 3])  # no positives anywhere
    assert [mb.phases_done for mb in none.micro_batches] == [1, 1, 2]
    with pytest.raises(ValueError, match="phase 1 needs more than 1 micro-batches"):
        make_layout(seqs, 2, phases=[0, 1, 1, 1, 1], phase_micro_batches=[1, 1])
