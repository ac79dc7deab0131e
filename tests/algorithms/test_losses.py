"""Tests of nemo_resrl.algorithms.losses (docs/algorithm.md §6) and the registry.

Every expected value comes from the float64 reference below, written from docs/algorithm.md's formulas
token by token in plain Python (math module); the code under test is never used to produce an expected value.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.algorithms.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    PolicyLossConfig,
    PolicyLossTerms,
    aggregate,
    compute_policy_loss,
    kl_penalty,
    ppo_clip_loss,
    tis_weights,
)
from nemo_resrl.algorithms.token_batch import GlobalCounts, local_counts
from nemo_resrl.common.registry import Registry

F64 = torch.float64
REL = 1e-12
ABS = 1e-12

NORM_C = 6.0  # the constant of seq-mean-token-sum-norm in these tests (the Dr.GRPO generation budget)

# (clip_low, clip_high, dual_clip_c): symmetric, DAPO clip-higher, no dual clip, a lopsided one.
CLIP_CONFIGS = [(0.2, 0.2, 3.0), (0.2, 0.28, 3.0), (0.2, 0.28, None), (0.1, 0.5, 2.0)]


# ----------------------------------------------------------------------------------------------------------
# Independent float64 reference (docs/algorithm.md §6), plain python per token.
# ----------------------------------------------------------------------------------------------------------
def ref_token(lp, olp, a, clip_low, clip_high, dual_c, log_ratio_clamp=20.0):
    """Per-token PPO surrogate. Returns (loss, d loss / d lp, clipped flag, dual flag, ratio)."""
    d = min(max(lp - olp, -log_ratio_clamp), log_ratio_clamp)
    rho = math.exp(d)
    unclipped = -a * rho
    rho_c = min(max(rho, 1.0 - clip_low), 1.0 + clip_high)
    clipped = -a * rho_c
    loss = max(unclipped, clipped)
    is_clipped = clipped > unclipped
    # Derivative of max(...): the unclipped branch has d/dlp = -a * rho (inside the log-ratio clamp);
    # the clipped branch is constant in lp whenever it is strictly larger (rho outside the clip range).
    inside_clamp = abs(lp - olp) < log_ratio_clamp
    grad = 0.0 if is_clipped else (-a * rho if inside_clamp else 0.0)
    is_dual = False
    if dual_c is not None and a < 0:
        bound = -a * dual_c
        if loss > bound:
            loss, grad, is_dual = bound, 0.0, True
    return loss, grad, is_clipped, is_dual, rho


def ref_kl(lp, rlp, kind):
    """Schulman's estimators of KL(pi || pi_ref); k3 (= low_var_kl) clamped to [-10, 10] (verl)."""
    if kind == "k1":
        return lp - rlp, 1.0
    if kind == "k2":
        return 0.5 * (lp - rlp) ** 2, lp - rlp
    x = rlp - lp  # log(pi_ref / pi)
    v = math.exp(x) - x - 1.0
    if v > 10.0:
        return 10.0, 0.0
    return v, -math.exp(x) + 1.0


def ref_counts(mask):
    """(valid tokens, sequences with >= 1 valid token) of a nested-list mask."""
    toks = sum(1 for row in mask for m in row if m)
    seqs = sum(1 for row in mask if any(row))
    return toks, seqs


def ref_weights(mask, mode, n_tok, n_seq):
    """d aggregate / d value for each token: the aggregation is linear in the per-token values."""
    w = []
    for row in mask:
        n_i = sum(1 for m in row if m)
        out = []
        for m in row:
            if not m:
                out.append(0.0)
            elif mode == "token-mean":
                out.append(1.0 / n_tok if n_tok > 0 else 0.0)
            elif mode == "seq-mean-token-mean":
                out.append(1.0 / (n_i * n_seq) if n_seq > 0 else 0.0)
            elif mode == "seq-mean-token-sum":
                out.append(1.0 / n_seq if n_seq > 0 else 0.0)
            elif mode == "seq-mean-token-sum-norm":
                out.append(1.0 / (n_seq * NORM_C) if n_seq > 0 else 0.0)
            else:
                raise AssertionError(mode)
        w.append(out)
    return w


def ref_aggregate(values, mask, mode, n_tok, n_seq):
    """docs/algorithm.md §6 aggregation written directly (per-sequence means for seq-mean-token-mean)."""
    if mode == "token-mean":
        total = sum(v for vr, mr in zip(values, mask) for v, m in zip(vr, mr) if m)
        return total / n_tok if n_tok > 0 else 0.0
    total = 0.0
    for vr, mr in zip(values, mask):
        vals = [v for v, m in zip(vr, mr) if m]
        if not vals:
            continue
        total += sum(vals) / len(vals) if mode == "seq-mean-token-mean" else sum(vals)
    if mode == "seq-mean-token-sum-norm":  # Dr.GRPO: token sums over a constant, never over |o_i|
        return total / (n_seq * NORM_C) if n_seq > 0 else 0.0
    return total / n_seq if n_seq > 0 else 0.0


def ref_policy_loss(
    lp,
    olp,
    adv,
    mask,
    clip_low,
    clip_high,
    dual_c,
    mode,
    n_tok,
    n_seq,
    *,
    log_ratio_clamp=20.0,
    ref=None,
    kl_coef=0.0,
    kl_type="k3",
    ent=None,
    ent_coef=0.0,
):
    """Reference (loss, grad wrt lp [B][T], metrics) for nested-list float inputs."""
    B, T = len(lp), len(lp[0])
    tok = [
        [
            ref_token(lp[i][t], olp[i][t], adv[i][t], clip_low, clip_high, dual_c, log_ratio_clamp)
            for t in range(T)
        ]
        for i in range(B)
    ]
    w = ref_weights(mask, mode, n_tok, n_seq)
    losses = [[x[0] for x in row] for row in tok]
    loss = ref_aggregate(losses, mask, mode, n_tok, n_seq)
    grad = [[tok[i][t][1] * w[i][t] for t in range(T)] for i in range(B)]
    tm = ref_weights(mask, "token-mean", n_tok, n_seq)
    metrics = {
        "pg_loss": loss,
        "pg_clipfrac": sum(tm[i][t] * tok[i][t][2] for i in range(B) for t in range(T)),
        "pg_dual_clipfrac": sum(tm[i][t] * tok[i][t][3] for i in range(B) for t in range(T)),
        "ppo_kl": sum(tm[i][t] * (olp[i][t] - lp[i][t]) for i in range(B) for t in range(T) if mask[i][t]),
    }
    if kl_coef > 0:
        kl_tok = [[ref_kl(lp[i][t], ref[i][t], kl_type) for t in range(T)] for i in range(B)]
        kl = ref_aggregate([[x[0] for x in row] for row in kl_tok], mask, mode, n_tok, n_seq)
        loss += kl_coef * kl
        for i in range(B):
            for t in range(T):
                grad[i][t] += kl_coef * kl_tok[i][t][1] * w[i][t]
        metrics["kl"] = kl
    if ent is not None:
        e = ref_aggregate(ent, mask, mode, n_tok, n_seq)
        if ent_coef > 0:
            loss -= ent_coef * e
        metrics["entropy"] = e
    metrics["loss"] = loss
    return loss, grad, metrics


# ----------------------------------------------------------------------------------------------------------
# Inputs that hit every branch.
# ----------------------------------------------------------------------------------------------------------
# Ratios far below, just inside and far above the clip ranges (incl. 1.25 in (1.2, 1.28): clipped only when
# clip_high is ignored) and above the dual-clip bound; advantages of both signs and several sizes.
GRID_RATIOS = [0.05, 0.3, 0.79, 0.85, 1.0, 1.1, 1.19, 1.25, 1.31, 1.6, 2.5, 3.5, 12.0]
GRID_ADVS = [1.3, -0.7, 0.2, -2.1]
ROW_LENGTHS = [12, 9, 0, 5, 12, 1, 7, 12]  # row 2 fully padded, row 5 a single token
T_BRANCH = 12


def branch_batch(seed=0):
    """[8, 12] float64 batch whose valid tokens include the full ratio x advantage grid; padding holds
    huge finite garbage (ratio e^50 and |A| = 1e6), so any padding that leaks into a sum is obvious."""
    rng = np.random.default_rng(seed)
    B, T = len(ROW_LENGTHS), T_BRANCH
    mask = np.zeros((B, T))
    for i, n in enumerate(ROW_LENGTHS):
        mask[i, :n] = 1.0
    lp = -rng.uniform(0.1, 3.0, size=(B, T))
    d = rng.uniform(-2.5, 2.5, size=(B, T))
    adv = rng.normal(size=(B, T))
    valid = list(zip(*np.nonzero(mask)))
    grid = [(r, a) for r in GRID_RATIOS for a in GRID_ADVS]
    assert len(grid) <= len(valid)
    order = rng.permutation(len(valid))
    for (r, a), k in zip(grid, order):
        i, t = valid[k]
        d[i, t] = math.log(r)
        adv[i, t] = a
    olp = lp - d
    olp[mask == 0] = lp[mask == 0] - 50.0
    adv[mask == 0] = 1e6
    return lp, olp, adv, mask


def to_t(x, dtype=F64):
    return torch.tensor(np.asarray(x), dtype=dtype)


def assert_close(actual, expected, rel=REL, abs_=ABS):
    a = float(actual.detach()) if isinstance(actual, torch.Tensor) else float(actual)
    assert math.isfinite(a)
    assert a == pytest.approx(expected, rel=rel, abs=abs_)


def assert_grad_close(grad, expected, atol=1e-12):
    exp = np.asarray(expected, dtype=np.float64)
    g = grad.detach().numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, exp, rtol=1e-10, atol=atol)


def run_loss(lp, olp, adv, mask, cfg, counts=None, **kw):
    lp_t = to_t(lp).requires_grad_(True)
    mask_t = to_t(mask)
    if counts is None:
        counts = local_counts(mask_t)
    kw = {k: (to_t(v) if v is not None else None) for k, v in kw.items()}
    loss, metrics = compute_policy_loss(lp_t, to_t(olp), to_t(adv), mask_t, cfg, counts, **kw)
    loss.backward()
    return loss.detach(), metrics, lp_t.grad


# ----------------------------------------------------------------------------------------------------------
# PPO surrogate and aggregation against the reference.
# ----------------------------------------------------------------------------------------------------------
def test_branch_batch_covers_every_branch():
    """Guard: the fixture really exercises every branch (otherwise the reference tests prove little)."""
    lp, olp, adv, mask = branch_batch()
    for clip_low, clip_high, dual_c in CLIP_CONFIGS:
        seen = set()
        for i in range(mask.shape[0]):
            for t in range(mask.shape[1]):
                if not mask[i, t]:
                    continue
                a = adv[i, t]
                _, _, clipped, dual, rho = ref_token(lp[i, t], olp[i, t], a, clip_low, clip_high, dual_c)
                inside = 1 - clip_low < rho < 1 + clip_high
                seen.add(
                    (
                        "pos" if a > 0 else "neg",
                        "dual" if dual else "clip" if clipped else "in" if inside else "out",
                    )
                )
        expected = {
            ("pos", "in"),
            ("pos", "clip"),
            ("pos", "out"),
            ("neg", "in"),
            ("neg", "clip"),
            ("neg", "out"),
        }
        if dual_c is not None:
            expected.add(("neg", "dual"))
        assert expected <= seen, (clip_low, clip_high, dual_c, seen)
    assert ref_counts(mask.tolist())[1] < mask.shape[0]  # a fully padded row: N_seqs != B


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("clip_low,clip_high,dual_c", CLIP_CONFIGS)
def test_policy_loss_matches_reference(mode, clip_low, clip_high, dual_c):
    lp, olp, adv, mask = branch_batch()
    cfg = PolicyLossConfig(
        clip_low=clip_low, clip_high=clip_high, dual_clip_c=dual_c, agg=mode, agg_constant=NORM_C
    ).validate()
    n_tok, n_seq = ref_counts(mask.tolist())
    loss, metrics, grad = run_loss(lp, olp, adv, mask, cfg)
    exp_loss, exp_grad, exp_metrics = ref_policy_loss(
        lp.tolist(),
        olp.tolist(),
        adv.tolist(),
        mask.tolist(),
        clip_low,
        clip_high,
        dual_c,
        mode,
        n_tok,
        n_seq,
    )
    assert loss.dtype == F64
    assert_close(loss, exp_loss)
    assert_grad_close(grad, exp_grad)
    assert set(metrics) == set(exp_metrics)
    for k in ("pg_loss", "ppo_kl", "loss"):
        assert_close(metrics[k], exp_metrics[k])
    for k in ("pg_clipfrac", "pg_dual_clipfrac"):  # float32 indicator means
        assert_close(metrics[k], exp_metrics[k], rel=1e-6, abs_=1e-7)
    for v in metrics.values():
        assert not v.requires_grad


@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_uses_global_counts_not_local(mode):
    """The micro-batch is divided by the counts it is given, not by its own token / sequence counts."""
    lp, olp, adv, mask = branch_batch(seed=3)
    counts = GlobalCounts(tokens=1000.0, sequences=37.0)
    cfg = PolicyLossConfig(clip_high=0.28, agg=mode, agg_constant=NORM_C).validate()
    loss, metrics, grad = run_loss(lp, olp, adv, mask, cfg, counts=counts)
    exp_loss, exp_grad, exp_m = ref_policy_loss(
        lp.tolist(), olp.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, 3.0, mode, 1000.0, 37.0
    )
    assert_close(loss, exp_loss)
    assert_grad_close(grad, exp_grad)
    assert_close(metrics["pg_clipfrac"], exp_m["pg_clipfrac"], rel=1e-6, abs_=1e-8)
    assert_close(metrics["ppo_kl"], exp_m["ppo_kl"])


def test_ppo_clip_terms_match_reference():
    lp, olp, adv, mask = branch_batch(seed=1)
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip_c=3.0).validate()
    terms = ppo_clip_loss(to_t(lp), to_t(olp), to_t(adv), to_t(mask), cfg)
    assert isinstance(terms, PolicyLossTerms)
    B, T = mask.shape
    for i in range(B):
        for t in range(T):
            loss, _, clipped, dual, rho = ref_token(lp[i, t], olp[i, t], adv[i, t], 0.2, 0.28, 3.0)
            assert float(terms.ratio[i, t]) == pytest.approx(rho, rel=REL)
            assert bool(terms.clipped[i, t]) == (clipped and bool(mask[i, t]))
            assert bool(terms.dual_clipped[i, t]) == (dual and bool(mask[i, t]))
            if mask[i, t]:
                assert float(terms.loss[i, t]) == pytest.approx(loss, rel=REL, abs=ABS)


@pytest.mark.parametrize(
    "ratio,adv,expected",
    [
        # A > 0: pessimistic bound min(rho A, clip(rho) A) -> loss = -A * min(rho, 1 + eps_high).
        (2.0, 1.0, -1.28),
        (1.25, 1.0, -1.25),  # inside clip-higher range: NOT clipped (would be -1.2 if clip_high were ignored)
        (0.5, 1.0, -0.5),  # below 1 - eps_low with A > 0: unclipped branch is the larger loss
        # A < 0: loss = -A * max(rho, 1 - eps_low), capped at -A * c by the dual clip.
        (0.5, -1.0, 0.8),
        (2.0, -1.0, 2.0),  # outside the clip range but below c: unclipped
        (10.0, -1.0, 3.0),  # dual clip: -A * c
        (10.0, -0.5, 1.5),
    ],
)
def test_ppo_clip_hand_cases(ratio, adv, expected):
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip_c=3.0).validate()
    lp = torch.tensor([[math.log(ratio)]], dtype=F64)
    terms = ppo_clip_loss(
        lp, torch.zeros_like(lp), torch.tensor([[adv]], dtype=F64), torch.ones_like(lp), cfg
    )
    assert float(terms.loss[0, 0]) == pytest.approx(expected, rel=1e-12)


def test_dual_clip_not_applied_to_positive_advantages():
    """For A > 0 the dual-clip bound -A c is negative; applying it would replace every positive loss."""
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.2, dual_clip_c=3.0).validate()
    lp = torch.log(torch.tensor([[0.05, 0.5, 1.0, 1.1, 5.0]], dtype=F64))
    adv = torch.full_like(lp, 2.0)
    terms = ppo_clip_loss(lp, torch.zeros_like(lp), adv, torch.ones_like(lp), cfg)
    expected = [-2.0 * min(r, 1.2) for r in (0.05, 0.5, 1.0, 1.1, 5.0)]
    np.testing.assert_allclose(terms.loss[0].numpy(), expected, rtol=1e-12)
    assert not bool(terms.dual_clipped.any())


def test_log_ratio_clamp_applies_before_exp():
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.2, dual_clip_c=None, log_ratio_clamp=1.0).validate()
    lp = torch.tensor([[3.0, -3.0, 0.5]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=F64)
    adv = torch.tensor([[-1.0, 1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 3, dtype=F64)
    loss, _ = compute_policy_loss(lp, old, adv, mask, cfg, local_counts(mask))
    loss.backward()
    exp_loss, exp_grad, _ = ref_policy_loss(
        lp.tolist(),
        old.tolist(),
        adv.tolist(),
        mask.tolist(),
        0.2,
        0.2,
        None,
        "token-mean",
        3,
        1,
        log_ratio_clamp=1.0,
    )
    assert_close(loss, exp_loss)
    assert_grad_close(lp.grad, exp_grad)
    assert loss.item() == pytest.approx((math.e + math.exp(-1.0) * -1.0 + math.exp(0.5)) / 3, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# KL, entropy, aggregate, counts.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_penalty_matches_reference(kind):
    rng = np.random.default_rng(7)
    lp = -rng.uniform(0.1, 4.0, size=(3, 9))
    ref = -rng.uniform(0.1, 4.0, size=(3, 9))
    lp[0, 0], ref[0, 0] = -8.0, -0.5  # k3 = e^7.5 - 8.5 > 10: clamped
    out = kl_penalty(to_t(lp), to_t(ref), kind)
    exp = [[ref_kl(lp[i, t], ref[i, t], kind)[0] for t in range(9)] for i in range(3)]
    np.testing.assert_allclose(out.numpy(), exp, rtol=1e-12, atol=1e-14)
    if kind in ("k3", "low_var_kl"):
        assert float(out[0, 0]) == 10.0
        assert bool((out >= 0).all())


def test_kl_k3_hand_value():
    # log(pi_ref / pi) = 1: e - 1 - 1.
    out = kl_penalty(torch.tensor([[-2.0]], dtype=F64), torch.tensor([[-1.0]], dtype=F64), "k3")
    assert float(out) == pytest.approx(math.e - 2.0, rel=1e-14)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
def test_policy_loss_with_kl_and_entropy(mode, kl_type):
    lp, olp, adv, mask = branch_batch(seed=5)
    rng = np.random.default_rng(11)
    ref = lp + rng.normal(scale=0.7, size=lp.shape)
    ent = rng.uniform(0.0, 3.0, size=lp.shape)
    ent[mask == 0] = 1e6
    cfg = PolicyLossConfig(
        clip_high=0.28, agg=mode, agg_constant=NORM_C, kl_coef=0.05, kl_type=kl_type, entropy_coef=0.01
    ).validate()
    n_tok, n_seq = ref_counts(mask.tolist())
    loss, metrics, grad = run_loss(lp, olp, adv, mask, cfg, ref_logp=ref, entropy=ent)
    exp_loss, exp_grad, exp_m = ref_policy_loss(
        lp.tolist(),
        olp.tolist(),
        adv.tolist(),
        mask.tolist(),
        0.2,
        0.28,
        3.0,
        mode,
        n_tok,
        n_seq,
        ref=ref.tolist(),
        kl_coef=0.05,
        kl_type=kl_type,
        ent=ent.tolist(),
        ent_coef=0.01,
    )
    assert_close(loss, exp_loss)
    assert_grad_close(grad, exp_grad)
    for k in ("kl", "entropy", "loss", "pg_loss"):
        assert_close(metrics[k], exp_m[k])


def test_entropy_metric_reported_without_bonus():
    lp, olp, adv, mask = branch_batch(seed=2)
    ent = np.full(lp.shape, 2.0)
    cfg = PolicyLossConfig(entropy_coef=0.0).validate()
    loss, metrics, _ = run_loss(lp, olp, adv, mask, cfg, entropy=ent)
    assert_close(metrics["entropy"], 2.0)
    assert_close(loss, float(metrics["pg_loss"]))
    assert "kl" not in metrics


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_matches_reference(mode):
    rng = np.random.default_rng(17)
    vals = rng.normal(size=(6, 8))
    mask = (rng.uniform(size=(6, 8)) < 0.6).astype(np.float64)
    mask[1] = 0.0
    mask[4] = 1.0
    vals[mask == 0] = np.nan  # padding must never reach the sum
    n_tok, n_seq = ref_counts(mask.tolist())
    out = aggregate(to_t(vals), to_t(mask), mode, GlobalCounts(tokens=n_tok, sequences=n_seq), NORM_C)
    assert_close(out, ref_aggregate(vals.tolist(), mask.tolist(), mode, n_tok, n_seq))


def test_aggregate_modes_differ_hand_case():
    """Two sequences, lengths 1 and 3: the three modes give three different numbers."""
    vals = torch.tensor([[4.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=F64)
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    counts = GlobalCounts(tokens=4.0, sequences=2.0)
    assert float(aggregate(vals, mask, "token-mean", counts)) == pytest.approx(10.0 / 4.0)
    assert float(aggregate(vals, mask, "seq-mean-token-mean", counts)) == pytest.approx((4.0 + 2.0) / 2.0)
    assert float(aggregate(vals, mask, "seq-mean-token-sum", counts)) == pytest.approx(10.0 / 2.0)


def test_local_counts():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    c = local_counts(mask)
    assert (c.tokens, c.sequences) == ref_counts(mask.tolist()) == (6, 3)
    c = local_counts(mask.to(F64))
    assert (c.tokens, c.sequences) == (6, 3)


# ----------------------------------------------------------------------------------------------------------
# Micro-batch split invariance (hypothesis).
# ----------------------------------------------------------------------------------------------------------
@st.composite
def split_case(draw):
    B = draw(st.integers(1, 7))
    T = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    cuts = draw(st.lists(st.booleans(), min_size=B - 1, max_size=B - 1))
    mode = draw(st.sampled_from(AGG_MODES))
    clip = draw(st.sampled_from(CLIP_CONFIGS))
    kl_type = draw(st.sampled_from(["none", "k1", "k2", "k3"]))
    use_entropy = draw(st.booleans())
    p_valid = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return B, T, seed, cuts, mode, clip, kl_type, use_entropy, p_valid


def split_rows(B, cuts):
    groups, start = [], 0
    for i, cut in enumerate(cuts, start=1):
        if cut:
            groups.append(list(range(start, i)))
            start = i
    groups.append(list(range(start, B)))
    return groups


@settings(max_examples=50, deadline=None)
@given(split_case())
def test_micro_batch_split_invariance(case):
    B, T, seed, cuts, mode, (clip_low, clip_high, dual_c), kl_type, use_entropy, p_valid = case
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.05, 3.0, size=(B, T))
    olp = lp - rng.uniform(-2.0, 2.0, size=(B, T))
    adv = rng.normal(scale=1.5, size=(B, T))
    mask = (rng.uniform(size=(B, T)) < p_valid).astype(np.float64)
    ref = lp + rng.normal(scale=0.5, size=(B, T))
    ent = rng.uniform(0.0, 2.0, size=(B, T))
    kl_coef = 0.0 if kl_type == "none" else 0.1
    cfg = PolicyLossConfig(
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip_c=dual_c,
        agg=mode,
        agg_constant=NORM_C,
        kl_coef=kl_coef,
        kl_type="k3" if kl_type == "none" else kl_type,
        entropy_coef=0.02 if use_entropy else 0.0,
    ).validate()
    extra = {"ref_logp": ref if kl_coef > 0 else None, "entropy": ent if use_entropy else None}

    full_loss, full_m, full_grad = run_loss(lp, olp, adv, mask, cfg, **extra)

    parts = split_rows(B, cuts)
    local = [local_counts(to_t(mask[rows])) for rows in parts]
    counts = GlobalCounts(tokens=sum(c.tokens for c in local), sequences=sum(c.sequences for c in local))
    assert counts == local_counts(to_t(mask))
    sum_loss = 0.0
    sum_m = {k: 0.0 for k in full_m}
    grad = np.zeros((B, T))
    for rows in parts:
        sub_extra = {k: (v[rows] if v is not None else None) for k, v in extra.items()}
        loss, m, g = run_loss(lp[rows], olp[rows], adv[rows], mask[rows], cfg, counts=counts, **sub_extra)
        sum_loss += float(loss)
        for k in sum_m:
            sum_m[k] += float(m[k])
        grad[rows] = g.numpy()

    assert sum_loss == pytest.approx(float(full_loss), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, full_grad.numpy(), rtol=1e-10, atol=1e-13)
    for k in ("pg_loss", "loss", "ppo_kl", "kl", "entropy"):
        if k in full_m:
            assert sum_m[k] == pytest.approx(float(full_m[k]), rel=1e-12, abs=1e-12)
    for k in ("pg_clipfrac", "pg_dual_clipfrac"):
        assert sum_m[k] == pytest.approx(float(full_m[k]), rel=1e-6, abs=1e-7)

    # And the full batch itself against the reference.
    n_tok, n_seq = ref_counts(mask.tolist())
    exp_loss, exp_grad, exp_m = ref_policy_loss(
        lp.tolist(),
        olp.tolist(),
        adv.tolist(),
        mask.tolist(),
        clip_low,
        clip_high,
        dual_c,
        mode,
        n_tok,
        n_seq,
        ref=ref.tolist(),
        kl_coef=kl_coef,
        kl_type="k3" if kl_type == "none" else kl_type,
        ent=ent.tolist() if use_entropy else None,
        ent_coef=0.02 if use_entropy else 0.0,
    )
    assert_close(full_loss, exp_loss)
    assert_grad_close(full_grad, exp_grad)
    assert_close(full_m["pg_clipfrac"], exp_m["pg_clipfrac"], rel=1e-6, abs_=1e-7)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_empty_micro_batch_contributes_zero(mode):
    lp, olp, adv, mask = branch_batch()
    cfg = PolicyLossConfig(agg=mode, agg_constant=NORM_C).validate()
    full_loss, _, _ = run_loss(lp, olp, adv, mask, cfg)
    empty = np.zeros((0, lp.shape[1]))
    loss, metrics, grad = run_loss(empty, empty, empty, empty, cfg, counts=local_counts(to_t(mask)))
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in metrics.values())
    assert math.isfinite(float(full_loss))


# ----------------------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", AGG_MODES)
def test_all_masked_gives_exact_zero(mode):
    B, T = 3, 4
    nan = np.full((B, T), np.nan)
    mask = np.zeros((B, T))
    cfg = PolicyLossConfig(agg=mode, agg_constant=NORM_C, kl_coef=0.1, entropy_coef=0.1).validate()
    counts = local_counts(to_t(mask))
    assert (counts.tokens, counts.sequences) == (0.0, 0.0)
    loss, metrics, grad = run_loss(nan, nan, nan, mask, cfg, ref_logp=nan, entropy=nan)
    assert float(loss) == 0.0
    assert np.all(grad.numpy() == 0.0)
    for k, v in metrics.items():
        assert float(v) == 0.0, k
    assert float(aggregate(to_t(nan), to_t(mask), mode, counts, NORM_C)) == 0.0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("where", ["logp", "old_logp", "advantages", "ref_logp", "entropy"])
def test_nan_padding_does_not_change_loss_or_metrics(mode, where):
    lp, olp, adv, mask = branch_batch(seed=4)
    rng = np.random.default_rng(0)
    ref = lp + rng.normal(scale=0.3, size=lp.shape)
    ent = rng.uniform(0.0, 2.0, size=lp.shape)
    cfg = PolicyLossConfig(agg=mode, agg_constant=NORM_C, kl_coef=0.1, entropy_coef=0.05).validate()
    clean = dict(lp=lp, olp=olp, adv=adv, ref=ref, ent=ent)
    dirty = {k: v.copy() for k, v in clean.items()}
    key = {"logp": "lp", "old_logp": "olp", "advantages": "adv", "ref_logp": "ref", "entropy": "ent"}[where]
    dirty[key][mask == 0] = np.nan
    loss_c, m_c, _ = run_loss(lp, olp, adv, mask, cfg, ref_logp=ref, entropy=ent)
    d = dirty
    loss_d, m_d, _ = run_loss(d["lp"], d["olp"], d["adv"], mask, cfg, ref_logp=d["ref"], entropy=d["ent"])
    assert math.isfinite(float(loss_d))
    assert float(loss_d) == float(loss_c)
    for k in m_c:
        assert float(m_d[k]) == float(m_c[k]), k


@pytest.mark.parametrize("where", ["logp", "old_logp", "advantages", "ref_logp"])
def test_nan_padding_does_not_leak_into_gradient(where):
    """NaN at padded positions must not reach d loss / d logp (it would poison every parameter in backward).
    Expected: the gradient is finite, zero at padding and equal to the clean batch's gradient."""
    lp, olp, adv, mask = branch_batch(seed=4)
    ref = lp + np.random.default_rng(0).normal(scale=0.3, size=lp.shape)
    # Ordinary padding first (ratio 1, inside every clamp), so no clamp can hide a leaking NaN.
    pad = mask == 0
    lp[pad], olp[pad], adv[pad], ref[pad] = -1.0, -1.0, 0.5, -1.3
    cfg = PolicyLossConfig(kl_coef=0.1).validate()
    _, _, grad_c = run_loss(lp, olp, adv, mask, cfg, ref_logp=ref)
    d = {"logp": lp.copy(), "old_logp": olp.copy(), "advantages": adv.copy(), "ref_logp": ref.copy()}
    d[where][mask == 0] = np.nan
    _, _, grad_d = run_loss(d["logp"], d["old_logp"], d["advantages"], mask, cfg, ref_logp=d["ref_logp"])
    g = grad_d.numpy()
    assert np.all(np.isfinite(g)), (
        f"NaN in {where} padding leaked into the gradient at {np.argwhere(~np.isfinite(g))}"
    )
    assert np.all(g[mask == 0] == 0.0)
    np.testing.assert_array_equal(g, grad_c.numpy())


@pytest.mark.parametrize("where", ["logp", "old_logp", "advantages"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_at_valid_position_raises(where, bad):
    lp, olp, adv, mask = branch_batch()
    d = {"logp": lp, "old_logp": olp, "advantages": adv}
    d[where][0, 3] = bad
    assert mask[0, 3] == 1.0
    with pytest.raises(ValueError, match=where):
        run_loss(d["logp"], d["old_logp"], d["advantages"], mask, PolicyLossConfig().validate())


@pytest.mark.parametrize("where", ["ref_logp", "entropy"])
def test_nan_in_ref_logp_or_entropy_at_valid_position_raises(where):
    """The optional inputs get the same boundary check as logp / old_logp / advantages (checks.py: 'clear
    errors at the boundary, never NaN later') instead of silently turning the loss or a metric into NaN."""
    lp, olp, adv, mask = branch_batch()
    ref = lp.copy()
    ent = np.ones_like(lp)
    {"ref_logp": ref, "entropy": ent}[where][0, 3] = np.nan
    cfg = PolicyLossConfig(kl_coef=0.1, entropy_coef=0.01).validate()
    with pytest.raises(ValueError, match=where):
        run_loss(lp, olp, adv, mask, cfg, ref_logp=ref, entropy=ent)


def _ok(B=2, T=3):
    z = torch.zeros(B, T, dtype=F64)
    return z, z.clone(), z.clone(), torch.ones(B, T, dtype=F64)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: dict(a, logp=torch.zeros(3, dtype=F64)),
        lambda a: dict(a, logp=torch.zeros(2, 3, 1, dtype=F64)),
        lambda a: dict(a, old_logp=torch.zeros(2, 4, dtype=F64)),
        lambda a: dict(a, advantages=torch.zeros(2, dtype=F64)),
        lambda a: dict(a, advantages=torch.zeros(3, 2, dtype=F64)),
        lambda a: dict(a, mask=torch.ones(1, 3, dtype=F64)),
        lambda a: dict(a, ref_logp=torch.zeros(2, 2, dtype=F64)),
        lambda a: dict(a, ref_logp=None),
        lambda a: dict(a, entropy=torch.zeros(2, 4, dtype=F64)),
    ],
    ids=[
        "logp_1d",
        "logp_3d",
        "old_T",
        "adv_1d",
        "adv_transposed",
        "mask_B",
        "ref_shape",
        "ref_missing",
        "ent",
    ],
)
def test_wrong_shapes_raise(mutate):
    lp, olp, adv, mask = _ok()
    args = dict(
        logp=lp, old_logp=olp, advantages=adv, mask=mask, ref_logp=torch.zeros(2, 3, dtype=F64), entropy=None
    )
    args = mutate(args)
    cfg = PolicyLossConfig(kl_coef=0.1).validate()
    counts = GlobalCounts(tokens=6.0, sequences=2.0)
    with pytest.raises(ValueError):
        compute_policy_loss(
            args["logp"],
            args["old_logp"],
            args["advantages"],
            args["mask"],
            cfg,
            counts,
            ref_logp=args["ref_logp"],
            entropy=args["entropy"],
        )


def test_aggregate_and_kl_bad_arguments_raise():
    v = torch.zeros(2, 3, dtype=F64)
    counts = GlobalCounts(tokens=6.0, sequences=2.0)
    with pytest.raises(ValueError):
        aggregate(v, torch.ones(2, 4, dtype=F64), "token-mean", counts)
    with pytest.raises(ValueError):
        aggregate(v, torch.ones(2, 3, dtype=F64), "seq-sum", counts)
    with pytest.raises(ValueError):
        kl_penalty(v, v, "k4")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "no_such_loss"},
        {"clip_low": -0.1},
        {"clip_low": 1.0},
        {"clip_low": float("nan")},
        {"clip_high": -0.01},
        {"clip_high": float("nan")},
        {"dual_clip_c": 1.0},
        {"dual_clip_c": 0.5},
        {"dual_clip_c": float("nan")},
        {"log_ratio_clamp": 0.0},
        {"log_ratio_clamp": -1.0},
        {"agg": "sum"},
        {"agg": "token_mean"},
        {"kl_type": "k4"},
        {"kl_coef": -0.1},
        {"entropy_coef": -1e-3},
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        PolicyLossConfig(**kwargs).validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"clip_high": 0.28},
        {"dual_clip_c": None},
        {"agg": "seq-mean-token-sum", "kl_coef": 0.1, "kl_type": "k2"},
    ],
)
def test_valid_config_validates_to_itself(kwargs):
    cfg = PolicyLossConfig(**kwargs)
    assert cfg.validate() is cfg


def test_default_config_is_spec_default():
    cfg = PolicyLossConfig()
    assert (cfg.name, cfg.clip_low, cfg.clip_high, cfg.dual_clip_c, cfg.agg) == (
        "ppo_clip",
        0.2,
        0.2,
        3.0,
        "token-mean",
    )
    assert cfg.kl_coef == 0.0 and cfg.entropy_coef == 0.0


# ----------------------------------------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------------------------------------
def _f():
    return 1


def _g():
    return 2


def test_registry_register_get_and_duplicates():
    reg = Registry("thing")
    assert reg.register("a")(_f) is _f
    assert reg.register("a")(_f) is _f  # same function again: no-op
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(_g)
    assert reg.get("a") is _f  # the failed registration did not replace it
    reg.register("b")(_g)
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg
    with pytest.raises(KeyError, match="unknown thing 'c'"):
        reg.get("c")


def test_policy_loss_registry():
    assert "ppo_clip" in POLICY_LOSSES
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip_loss
    with pytest.raises(ValueError):
        POLICY_LOSSES.register("ppo_clip")(_f)
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip_loss
    with pytest.raises(KeyError):
        POLICY_LOSSES.get("ppo_clipp")


def test_compute_policy_loss_dispatches_on_name(monkeypatch):
    def linear(logp, old_logp, advantages, mask, cfg):
        z = torch.zeros_like(mask, dtype=torch.bool)
        return PolicyLossTerms(
            loss=-advantages * logp, ratio=torch.ones_like(logp), clipped=z, dual_clipped=z
        )

    from nemo_resrl.config import specs

    # a throw-away copy of the registry and of the config's names, then a registration as a plugin makes it
    monkeypatch.setattr(POLICY_LOSSES, "_entries", dict(POLICY_LOSSES._entries))
    monkeypatch.setattr(specs, "POLICY_LOSS_NAMES", set(specs.POLICY_LOSS_NAMES))
    monkeypatch.setattr(POLICY_LOSSES, "_names", specs.POLICY_LOSS_NAMES)
    POLICY_LOSSES.register("unit_test_linear")(linear)  # the config now accepts the name
    cfg = PolicyLossConfig(name="unit_test_linear").validate()
    lp = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]], dtype=F64)
    adv = torch.tensor([[1.0, 2.0], [-1.0, 5.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    loss, _ = compute_policy_loss(lp, lp, adv, mask, cfg, local_counts(mask))
    assert float(loss) == pytest.approx((1.0 + 4.0 - 3.0) / 3.0)


# ----------------------------------------------------------------------------------------------------------
# Truncated importance sampling.
# ----------------------------------------------------------------------------------------------------------
def test_tis_weights_are_the_capped_ratio_and_one_where_the_policies_agree():
    rng = np.random.default_rng(0)
    old = -rng.uniform(0.1, 3.0, size=(5, 7))
    rollout = old + rng.normal(scale=0.6, size=(5, 7))
    rollout[2] = old[2]  # the sampler agrees with the trainer on this response
    cap = 1.5
    w = tis_weights(to_t(old), to_t(rollout), cap)
    expected = [[min(math.exp(o - r), cap) for o, r in zip(orow, rrow)] for orow, rrow in zip(old, rollout)]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)
    assert torch.equal(w[2], torch.ones(7, dtype=F64))
    assert float(w.max()) == cap and float(w.min()) < 1  # capped above, never below
    with pytest.raises(ValueError, match="cap must be >= 1"):
        tis_weights(to_t(old), to_t(rollout), 0.5)


def test_tis_weights_multiply_each_tokens_clipped_surrogate():
    lp, olp, adv, mask = branch_batch()
    w = np.random.default_rng(1).uniform(0.2, 2.0, size=lp.shape)
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip_c=3.0).validate()
    n_tok, n_seq = ref_counts(mask.tolist())
    loss, _, grad = run_loss(lp, olp, adv, mask, cfg, is_weights=to_t(w))
    tok = [
        [ref_token(lp[i][t], olp[i][t], adv[i][t], 0.2, 0.28, 3.0) for t in range(lp.shape[1])]
        for i in range(lp.shape[0])
    ]
    weighted = [[tok[i][t][0] * w[i][t] for t in range(lp.shape[1])] for i in range(lp.shape[0])]
    assert_close(loss, ref_aggregate(weighted, mask.tolist(), "token-mean", n_tok, n_seq))
    expected_grad = [
        [tok[i][t][1] * w[i][t] / n_tok if mask[i][t] else 0.0 for t in range(lp.shape[1])]
        for i in range(lp.shape[0])
    ]
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-10, atol=1e-14)
    ones, _, _ = run_loss(lp, olp, adv, mask, cfg, is_weights=to_t(np.ones_like(w)))
    plain, _, _ = run_loss(lp, olp, adv, mask, cfg)
    assert float(ones) == float(plain)  # weights of 1: exactly the uncorrected loss
