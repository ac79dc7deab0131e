import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    broadcast_to_tokens,
    compute_advantages,
)
from tests.algorithms import reference as ref


def _batch(rewards, groups):
    r = torch.tensor(rewards, dtype=torch.float32)
    return r, r > 0, torch.tensor(groups)


def test_registry_has_every_baseline():
    assert set(ADVANTAGE_ESTIMATORS.names()) >= {"grpo", "dr_grpo", "rloo", "psr", "nsr", "w_reinforce"}


def _rloo_brute_force(rewards: list[float], groups: list[int]) -> list[float]:
    """A_i = r_i - (mean of the OTHER rewards of i's group), by explicit loops; 0 for a one-response group
    (and for a group of equal rewards, where it is 0 anyway)."""
    out = []
    for i, (r, g) in enumerate(zip(rewards, groups)):
        others = [rewards[j] for j in range(len(rewards)) if groups[j] == g and j != i]
        out.append(r - sum(others) / len(others) if others else 0.0)
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, -1.0, 0.7, 0.25]), st.integers(0, 4)), min_size=1, max_size=24
    )
)
def test_rloo_equals_the_leave_one_out_baseline_by_brute_force(rows):
    rewards = [r for r, _ in rows]
    groups = [g for _, g in rows]
    out = compute_advantages("rloo", *_batch(rewards, groups))
    np.testing.assert_allclose(out.double().numpy(), _rloo_brute_force(rewards, groups), rtol=1e-6, atol=1e-6)
    for g in set(groups):  # the leave-one-out advantages of a group sum to 0
        assert abs(float(out[torch.tensor(groups) == g].sum())) < 1e-5


def test_rloo_small_cases():
    out = compute_advantages("rloo", *_batch([1.0, 0.0, 0.0, 1.0, 0.7], [0, 0, 0, 1, 2]))
    # group 0: 1 - 0 = 1, 0 - 0.5 = -0.5 (twice); groups 1 and 2 hold one response: 0
    np.testing.assert_allclose(out.numpy(), [1.0, -0.5, -0.5, 0.0, 0.0], atol=1e-7)
    assert torch.equal(compute_advantages("rloo", *_batch([0.3] * 4, [1] * 4)), torch.zeros(4))


@pytest.mark.parametrize("name,norm", [("grpo", True), ("dr_grpo", False)])
def test_group_normalised_matches_reference(name, norm):
    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 0.3, 0.7, 0.7, -1.0, 1.0]
    groups = [5, 5, 5, 5, 9, 9, 9, 9, 2, 2]
    out = compute_advantages(name, *_batch(rewards, groups))
    np.testing.assert_allclose(out.double().numpy(), ref.grpo(rewards, groups, norm), rtol=1e-6, atol=1e-6)


def test_grpo_uses_unbiased_std():
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5) -> A = +-0.5 / 0.7071 = +-0.7071 (biased would be +-1)
    out = compute_advantages("grpo", *_batch([1.0, 0.0], [0, 0]))
    np.testing.assert_allclose(out.numpy(), [0.5 / np.sqrt(0.5), -0.5 / np.sqrt(0.5)], rtol=1e-5)


@pytest.mark.parametrize("value", [0.1, 0.7, 1.0 / 3.0, -2.3])
def test_equal_rewards_give_exactly_zero_in_fp32(value):
    # mean of equal float32 values may differ from them by rounding; the advantage must still be exactly 0
    r = torch.full((7,), value, dtype=torch.float32)
    for name in ("grpo", "dr_grpo"):
        out = compute_advantages(name, r, r > 0, torch.zeros(7, dtype=torch.long))
        assert torch.equal(out, torch.zeros(7))


def test_single_response_group_is_zero_not_nan():
    out = compute_advantages("grpo", *_batch([1.0, 1.0, 0.0], [0, 1, 1]))
    assert out[0] == 0 and torch.isfinite(out).all()


def test_psr_nsr_w_reinforce():
    r, c, g = _batch([1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    assert compute_advantages("psr", r, c, g).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert compute_advantages("nsr", r, c, g).tolist() == [0.0, -1.0, 0.0, -1.0]
    out = compute_advantages("w_reinforce", r, c, g, AdvantageConfig(w_reinforce_lambda=0.25))
    assert out.tolist() == [0.25, -1.0, 0.25, -1.0]


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from([0.0, 1.0, -1.0, 0.5])), min_size=1, max_size=24
    ),
    norm=st.booleans(),
)
def test_grpo_property_matches_reference(data, norm):
    groups = [g for g, _ in data]
    rewards = [r for _, r in data]
    out = compute_advantages("grpo" if norm else "dr_grpo", *_batch(rewards, groups))
    np.testing.assert_allclose(out.double().numpy(), ref.grpo(rewards, groups, norm), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    r, c, g = _batch([1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        compute_advantages("grpo", torch.tensor([1.0, float("nan")]), c, g)
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("grpo", r, c, torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        compute_advantages("grpo", r, c, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        compute_advantages(
            "grpo", torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="bool"):
        compute_advantages("psr", r, torch.tensor([1, 0]), g)
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        compute_advantages("ppo", r, c, g)


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
