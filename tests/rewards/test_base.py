r"""Tests of nemo_resrl.rewards.base: last-\boxed extraction and RewardResult."""

import collections

import pytest
import torch

from nemo_resrl.rewards.base import REASONS, RewardResult, extract_last_boxed, make_result


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{3}", "3"),
        (r"first \boxed{1}, then \boxed{ 2 }", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{a \}}", r"a \}"),
        (r"\boxed {x^{2}}", "x^{2}"),  # space before the brace
        (r"\fbox{5}", "5"),
        (r"$\boxed{\text{(B)}}$", r"\text{(B)}"),
        (r"\boxed{1} and a cut-off \boxed{\frac{1}{", None),  # last box unclosed: no answer
        ("no box here", None),
        (r"\boxed", None),
        (r"\boxed{}", ""),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


def test_make_result_and_metrics():
    r = make_result([1.0, 0.0, 0.0], [True, False, False], ["ok", "ok", "timeout"])
    assert r.rewards.dtype == torch.float32 and r.correct.dtype == torch.bool
    assert r.counts["ok"] == 2 and r.counts["timeout"] == 1 and r.counts["crash"] == 0
    assert set(r.counts) == set(REASONS)
    m = r.as_metrics()
    assert m["reward/mean"] == pytest.approx(1 / 3)
    assert m["reward/accuracy"] == pytest.approx(1 / 3)
    assert m["reward/count/timeout"] == 1.0 and m["reward/count/crash"] == 0.0
    empty = make_result([], [], []).as_metrics("x/")
    assert empty["x/mean"] == 0.0 and empty["x/n"] == 0.0


def test_reward_result_validates():
    with pytest.raises(ValueError, match="do not sum"):
        RewardResult(torch.zeros(2), torch.zeros(2, dtype=torch.bool), collections.Counter(ok=1))
    with pytest.raises(ValueError, match="must both be"):
        RewardResult(torch.zeros(2), torch.zeros(3, dtype=torch.bool), collections.Counter(ok=2))
