from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.algorithms import (
    ResRLConfig,
    group_sample_seed,
    group_skip_reason,
    quantile_gate,
    resrl_token_advantages,
    sample_row_indices,
    token_advantages,
)
from nemo_resrl.algorithms.resrl import (
    SKIP_FEW_POSITIVE_TOKENS,
    SKIP_NO_NEGATIVE,
    SKIP_NO_NEGATIVE_TOKENS,
    SKIP_NO_POSITIVE,
    grouped_quantile_bounds,
    linear_quantile,
)
from nemo_resrl.algorithms.resrl import compute_resrl_weights as resrl_weights
from nemo_resrl.algorithms.subspace import SVD_METHODS
from tests.algorithms import reference as ref

CFG = ResRLConfig(rank=6, svd_method="exact")


def compute_resrl_weights(hidden, mask, groups, adv, cfg=CFG, **kw):
    """The API with the verifier's verdicts ``correct = A > 0`` (the default positive set's input): in
    these batches every correct response has A > 0, so both rules agree."""
    kw.setdefault("correct", adv > 0)
    return resrl_weights(hidden, mask, groups, adv, cfg, **kw)


def _batch(seed=0, b=8, t=12, d=32, groups=(0, 0, 0, 0, 1, 1, 1, 1), adv=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g) * 2 + torch.randn(d, generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    if adv is None:
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, -1.0, 1.0])
    return hidden, mask, torch.tensor(groups), adv


def _ref(hidden, mask, groups, adv, cfg, **kw):
    return ref.resrl_weights(
        hidden.double().numpy(),
        mask.numpy(),
        groups.tolist(),
        adv.double().numpy(),
        rank=cfg.rank,
        alpha=cfg.alpha,
        beta=cfg.beta,
        xi=cfg.xi,
        **kw,
    )


@pytest.mark.parametrize("method", SVD_METHODS)
@pytest.mark.parametrize("alpha,beta,xi,rank", [(0.2, 0.8, 0.1, 6), (0.1, 0.9, 0.3, 3), (0.3, 0.7, 0.5, 64)])
def test_weights_match_float64_reference(method, alpha, beta, xi, rank):
    cfg = ResRLConfig(rank=rank, alpha=alpha, beta=beta, xi=xi, svd_method=method)
    hidden, mask, groups, adv = _batch(seed=1)
    got = compute_resrl_weights(hidden, mask, groups, adv, cfg).weights
    want = _ref(hidden, mask, groups, adv, cfg)
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-4)


def test_weights_with_subsampling_match_reference_given_the_same_rows():
    cfg = ResRLConfig(rank=5, max_rows=9, svd_method="exact", seed=3)
    hidden, mask, groups, adv = _batch(seed=2)
    step = 7
    got = compute_resrl_weights(hidden, mask, groups, adv, cfg, step=step).weights

    def rows(gid, pool):  # the sampling function is tested on its own below
        return sample_row_indices(pool, cfg.max_rows, group_sample_seed(cfg.seed, step, gid)).tolist()

    np.testing.assert_allclose(
        got.double().numpy(), _ref(hidden, mask, groups, adv, cfg, rows_for_group=rows), atol=2e-4
    )


@pytest.mark.parametrize(
    "mutation",
    [
        {"ln": False},  # no LayerNorm
        {"alpha": 0.3},
        {"beta": 0.9},
        {"xi": 0.2},
        {"rank": 5},
        {"min_pos_tokens": 10**6},  # every group skipped
    ],
)
def test_reference_comparison_can_fail(mutation):
    """The tolerance above is tight enough that an altered formula is detected."""
    hidden, mask, groups, adv = _batch(seed=1)
    got = compute_resrl_weights(hidden, mask, groups, adv, CFG).weights.double().numpy()
    kw = dict(rank=CFG.rank, alpha=CFG.alpha, beta=CFG.beta, xi=CFG.xi)
    kw.update(mutation)
    wrong = ref.resrl_weights(
        hidden.double().numpy(), mask.numpy(), groups.tolist(), adv.double().numpy(), **kw
    )
    assert np.abs(got - wrong).max() > 1e-2


def test_positive_tokens_padding_and_skipped_groups_get_one():
    hidden, mask, groups, adv = _batch(seed=4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0])  # group 1 all equal: A = 0 everywhere
    res = compute_resrl_weights(hidden, mask, groups, adv, CFG)
    w = res.weights
    assert (w[[0, 2]] == 1).all() and (w[4:] == 1).all() and (w[~mask] == 1).all()
    assert ((w[[1, 3]][mask[[1, 3]]] >= CFG.xi) & (w[[1, 3]][mask[[1, 3]]] <= 1)).all()
    assert res.stats.num_active == 1 and res.stats.skipped[SKIP_NO_POSITIVE] == 1


def test_degenerate_groups_follow_spec_4_5():
    hidden, mask, _, _ = _batch(seed=5, b=10)
    mask[8, 2:] = False  # group 4's positive response has 2 valid tokens (< 4)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    mask[7, :] = False  # group 3: the negative response has no valid token
    res = compute_resrl_weights(hidden, mask, groups, adv, CFG)
    s = res.stats
    assert s.skipped[SKIP_NO_NEGATIVE] == 1  # group 0: all correct
    assert s.skipped[SKIP_NO_POSITIVE] == 1  # group 1: all wrong
    assert s.skipped[SKIP_NO_NEGATIVE_TOKENS] == 1  # group 3
    assert s.skipped[SKIP_FEW_POSITIVE_TOKENS] == 1  # group 4
    assert s.num_active == 1  # group 2
    assert (res.weights[[0, 1, 2, 3, 6, 7, 8, 9]] == 1).all()
    assert (res.weights[5][mask[5]] < 1).any()


def test_m_smaller_than_rank_uses_m_minus_one():
    hidden, mask, _, _ = _batch(seed=6, b=2, t=5)
    mask[:] = True
    res = compute_resrl_weights(
        hidden, mask, torch.tensor([0, 0]), torch.tensor([1.0, -1.0]), ResRLConfig(rank=64)
    )
    assert res.stats.subspace_ranks == [4]  # M = 5 positive tokens -> k = 4


def test_group_skip_reason_rules():
    cfg = ResRLConfig()
    assert group_skip_reason(0, 3, 0, 10, 64, cfg) == SKIP_NO_POSITIVE
    assert group_skip_reason(3, 0, 10, 0, 64, cfg) == SKIP_NO_NEGATIVE
    assert group_skip_reason(1, 1, 3, 10, 64, cfg) == SKIP_FEW_POSITIVE_TOKENS
    assert group_skip_reason(1, 1, 4, 10, 64, cfg) is None


def test_negative_token_inside_positive_subspace_gets_the_floor():
    """A negative token equal to a positive one lies in the positive subspace (M <= k + 1) -> weight xi."""
    g = torch.Generator().manual_seed(7)
    d, t = 48, 10
    hidden = torch.randn(2, t, d, generator=g)
    copies = [0, 3, 4, 8]
    hidden[1, copies] = hidden[0, [1, 2, 5, 9]]
    mask = torch.ones(2, t, dtype=torch.bool)
    res = compute_resrl_weights(
        hidden, mask, torch.tensor([0, 0]), torch.tensor([1.0, -1.0]), ResRLConfig(rank=64)
    )
    w = res.weights[1]
    assert torch.allclose(w[copies], torch.full((4,), 0.1), atol=1e-6)
    others = [i for i in range(t) if i not in copies]
    assert (w[others] > 0.1).all() and w.max() == 1.0


def test_quantile_gate_matches_reference_and_flat_case():
    r = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 2.0, 0.0])
    np.testing.assert_allclose(
        quantile_gate(r, 0.2, 0.8, 0.1).numpy(), ref.gate(r.double().numpy(), 0.2, 0.8, 0.1), atol=1e-6
    )
    flat = torch.full((5,), 0.42)
    assert torch.equal(quantile_gate(flat, 0.2, 0.8, 0.1), torch.full((5,), 0.1 + 0.9 * 0.5))
    assert quantile_gate(torch.tensor([3.0]), 0.2, 0.8, 0.1).item() == pytest.approx(0.55)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300), st.floats(0, 1))
def test_linear_quantile_equals_numpy(values, q):
    v = torch.tensor(values, dtype=torch.float64)
    assert linear_quantile(v, q).item() == pytest.approx(float(np.quantile(values, q)), rel=1e-12, abs=1e-12)


def test_sampling_is_uniform_without_replacement_sorted_and_seeded():
    pool, m, trials = 20, 5, 4000
    counts = torch.zeros(pool)
    for s in range(trials):
        idx = sample_row_indices(pool, m, seed=s)
        assert idx.numel() == m and torch.unique(idx).numel() == m and torch.equal(idx, idx.sort().values)
        counts[idx] += 1
    freq = counts / trials
    assert (freq - m / pool).abs().max() < 0.035  # binomial std 0.0068: > 5 sigma
    assert torch.equal(sample_row_indices(100, 10, 5), sample_row_indices(100, 10, 5))
    assert not torch.equal(sample_row_indices(100, 10, 5), sample_row_indices(100, 10, 6))
    assert torch.equal(sample_row_indices(7, 10, 1), torch.arange(7))
    assert group_sample_seed(0, 1, 2) != group_sample_seed(0, 2, 1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    rewards=st.lists(st.sampled_from([0.0, 1.0]), min_size=8, max_size=8),
    xi=st.floats(0.0, 1.0),
    rank=st.integers(1, 20),
    max_rows=st.integers(2, 60),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    constant_rows=st.booleans(),
)
def test_property_weights_in_range_and_finite(seed, rewards, xi, rank, max_rows, scale, constant_rows):
    hidden, mask, groups, _ = _batch(seed=seed)
    hidden = hidden * scale
    if constant_rows:  # degenerate representations: every token the same vector
        hidden[:] = hidden[0, 0]
    adv = ref.grpo(rewards, groups.tolist())
    adv = torch.tensor(adv, dtype=torch.float32)
    cfg = ResRLConfig(xi=xi, rank=rank, max_rows=max_rows, svd_method="randomized")
    w = compute_resrl_weights(hidden, mask, groups, adv, cfg).weights
    assert torch.isfinite(w).all()
    assert (w >= xi - 1e-6).all() and (w <= 1 + 1e-6).all()
    assert (w[adv > 0] == 1).all() and (w[~mask] == 1).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), perm_seed=st.integers(0, 10**6))
def test_property_invariant_to_response_and_token_order(seed, perm_seed):
    hidden, mask, groups, adv = _batch(seed=seed)
    base = compute_resrl_weights(hidden, mask, groups, adv, CFG).weights
    g = torch.Generator().manual_seed(perm_seed)
    # responses: permute rows (ids travel with them)
    p = torch.randperm(hidden.shape[0], generator=g)
    out = compute_resrl_weights(hidden[p], mask[p], groups[p], adv[p], CFG, response_ids=p).weights
    torch.testing.assert_close(out, base[p], atol=1e-5, rtol=0)
    # tokens: permute positions within every response (all rows are used: M_max >= pool)
    q = torch.randperm(hidden.shape[1], generator=g)
    out = compute_resrl_weights(hidden[:, q], mask[:, q], groups, adv, CFG).weights
    # float32 sums over the tokens in another order move a weight by up to ~1.3e-4 (seed 159679,
    # permutation 182); an order-dependent bug moves weights by O(0.1)
    torch.testing.assert_close(out, base[:, q], atol=5e-4, rtol=0)


def test_subsample_is_independent_of_batch_order_given_response_ids():
    cfg = ResRLConfig(rank=4, max_rows=7, svd_method="exact")
    hidden, mask, groups, adv = _batch(seed=9)
    base = compute_resrl_weights(hidden, mask, groups, adv, cfg, step=3).weights
    p = torch.tensor([7, 3, 5, 1, 0, 2, 6, 4])
    out = compute_resrl_weights(hidden[p], mask[p], groups[p], adv[p], cfg, step=3, response_ids=p).weights
    torch.testing.assert_close(out, base[p], atol=1e-6, rtol=0)


def test_token_advantages_spec_6():
    adv = torch.tensor([2.0, -1.0, 0.0])
    w = torch.tensor([[0.3, 0.5], [0.2, 0.9], [0.4, 0.4]])
    out = token_advantages(adv, w, lambda_pos=0.1)
    assert torch.allclose(out, torch.tensor([[0.2, 0.2], [-0.2, -0.9], [0.0, 0.0]]))
    hidden, mask, groups, adv = _batch(seed=10)
    a, stats = resrl_token_advantages(hidden, mask, groups, adv, CFG, correct=adv > 0)
    assert (a[~mask] == 0).all() and torch.isfinite(a).all()
    assert stats.as_metrics()["resrl/groups_active"] == 2.0


def test_bad_inputs():
    hidden, mask, groups, adv = _batch(seed=11)
    bad = hidden.clone()
    bad[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        compute_resrl_weights(bad, mask, groups, adv, CFG)
    # NaN only at padding is ignored and never leaks into the weights
    pad = hidden.clone()
    row, col = torch.nonzero(~mask)[0].tolist()
    pad[row, col] = float("nan")
    assert torch.isfinite(compute_resrl_weights(pad, mask, groups, adv, CFG).weights).all()
    with pytest.raises(ValueError, match="response_mask"):
        compute_resrl_weights(hidden, mask[:, :-1], groups, adv, CFG)
    with pytest.raises(ValueError, match="hidden"):
        compute_resrl_weights(hidden[0], mask, groups, adv, CFG)
    with pytest.raises(ValueError, match="advantages"):
        compute_resrl_weights(hidden, mask, groups, torch.tensor([1.0, float("inf")] * 4), CFG)
    with pytest.raises(ValueError, match="unique"):
        compute_resrl_weights(hidden, mask, groups, adv, CFG, response_ids=torch.zeros(8, dtype=torch.long))
    for field, value in [("alpha", 0.9), ("xi", 1.5), ("rank", 0), ("svd_method", "qr"), ("max_rows", 1)]:
        with pytest.raises(ValueError, match=field):
            ResRLConfig(**{field: value}).validate()


def test_default_positive_set_is_the_verdicts_and_the_other_rule_is_explicit():
    """The preset's rule (positive_set=correct) is the API's default: a correct response with A < 0 (a
    long correct answer under the length-scaled reward) spans the subspace and is never gated; the A > 0
    rule must be asked for."""
    hidden, mask, groups, _ = _batch(seed=12)
    correct = torch.tensor([True, False, True, False, True, False, False, True])
    adv = torch.tensor([1.0, -1.0, -0.2, -0.5, 1.0, -1.0, -1.0, 1.0])  # response 2: correct, A < 0
    with pytest.raises(ValueError, match="needs the verifier's verdicts"):
        resrl_weights(hidden, mask, groups, adv, CFG)
    by_verdict = resrl_weights(hidden, mask, groups, adv, CFG, correct=correct).weights
    assert (by_verdict[2] == 1).all()  # a positive: not gated
    by_advantage = resrl_weights(hidden, mask, groups, adv, replace(CFG, positive_set="advantage")).weights
    assert (by_advantage[2][mask[2]] < 1).any()  # a negative under A > 0: gated
    want = _ref(hidden, mask, groups, adv, CFG, positive=correct.numpy())
    np.testing.assert_allclose(by_verdict.double().numpy(), want, atol=2e-4)


def test_grouped_quantile_bounds_equal_each_groups_own_quantiles():
    g = torch.Generator().manual_seed(3)
    counts = [5, 1, 0, 17, 2]
    values = torch.rand(sum(counts), generator=g)
    group = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    p = torch.randperm(values.numel(), generator=g)
    q_lo, q_hi = grouped_quantile_bounds(values[p], group[p], counts, 0.2, 0.8)
    for i, n in enumerate(counts):
        mine = values[group == i]
        want = (linear_quantile(mine, 0.2), linear_quantile(mine, 0.8)) if n else (0.0, 0.0)
        assert q_lo[i].item() == pytest.approx(float(want[0]), abs=1e-7)
        assert q_hi[i].item() == pytest.approx(float(want[1]), abs=1e-7)
