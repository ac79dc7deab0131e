r"""Tests of nemo_resrl.rewards.math: math-verify grading of the last \boxed{} in a process pool.

The pool tests use real worker processes: hung, dying and raising verifiers come from _workers.py
and from a real answer that makes sympy run for ever (``10^{10^{10}}``).
"""

import os
import time

import pytest
import torch

from nemo_resrl.rewards import REWARD_FNS, MathGrader
from nemo_resrl.rewards.base import REASONS
from nemo_resrl.rewards.math import _as_boxed, grade_one
from tests.rewards import _workers


@pytest.fixture(scope="module")
def grader():
    with MathGrader(workers=2, timeout_s=10.0) as g:
        yield g


def _assert_consistent(result, n):
    assert result.rewards.shape == (n,) and result.rewards.dtype == torch.float32
    assert result.correct.shape == (n,) and result.correct.dtype == torch.bool
    assert torch.equal(result.rewards, result.correct.float())
    assert sum(result.counts.values()) == n


def test_grade_one_in_process():
    assert grade_one(r"\frac{1}{2}", "0.5") == ("ok", True)
    assert grade_one("3", "4") == ("ok", False)
    assert grade_one("", "4") == ("parse_error", False)
    assert grade_one("4", "") == ("gold_parse_error", False)


def test_as_boxed():
    assert _as_boxed(" 1,2,3 ") == r"\boxed{1,2,3}"
    assert _as_boxed(r"\boxed{5}") == r"\boxed{5}"
    assert _as_boxed("$x^2$") == "$x^2$"


def test_correct_and_incorrect(grader):
    responses = [
        r"So the probability is \boxed{\frac{1}{2}}.",  # 1/2 == 0.5
        r"Hence \boxed{3}",  # wrong
        r"First \boxed{4}, no wait: \boxed{3}",  # the LAST box counts: wrong
        r"First \boxed{3}, no wait: \boxed{4}",  # the LAST box counts: right
        r"\boxed{\frac{\sqrt{3}}{2}}",  # nested braces
        r"\boxed{\left(\frac{1}{2}, 1\right]}",  # interval, nested braces
        r"\boxed{\{1, 2, 3\}}",  # escaped braces inside
        r"\boxed{x^{2}+1}",
    ]
    golds = ["0.5", "4", "4", "4", r"\frac{\sqrt3}{2}", r"(1/2, 1]", "{1,2,3}", "1 + x^2"]
    result = grader.grade(responses, golds)
    _assert_consistent(result, len(responses))
    assert result.correct.tolist() == [True, False, False, True, True, True, True, True]
    assert result.counts["ok"] == len(responses)
    assert result.counts["timeout"] == result.counts["crash"] == 0


def test_each_answer_against_its_own_gold(grader):
    result = grader.grade([r"\boxed{x = 3}", r"\boxed{3}", r"\boxed{7}"], ["3", "7", "7"])
    assert result.correct.tolist() == [True, False, True]


def test_no_boxed_answer_and_parse_errors(grader):
    responses = [
        "The answer is 4.",  # no box at all
        r"cut off: \boxed{\frac{1}{",  # the last box never closes
        r"\boxed{}",  # empty box: nothing to parse
        r"\boxed{4}",
        None,  # not even a string
    ]
    result = grader.grade(responses, ["4"] * 5)
    _assert_consistent(result, 5)
    assert result.correct.tolist() == [False, False, False, True, False]
    assert result.counts["no_boxed_answer"] == 3
    assert result.counts["parse_error"] == 1
    assert result.counts["ok"] == 1


def test_empty_batch_and_length_mismatch(grader):
    result = grader.grade([], [])
    assert len(result) == 0 and sum(result.counts.values()) == 0
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        grader.grade(["a", "b"], ["1"])


def test_metrics(grader):
    result = grader.grade([r"\boxed{1}", r"\boxed{2}", "none", r"\boxed{1}"], ["1", "1", "1", "1"])
    m = result.as_metrics(prefix="train/reward/")
    assert m["train/reward/mean"] == pytest.approx(0.5)
    assert m["train/reward/accuracy"] == pytest.approx(0.5)
    assert m["train/reward/n"] == 4.0
    assert m["train/reward/count/ok"] == 3.0
    assert m["train/reward/count/no_boxed_answer"] == 1.0
    assert {f"train/reward/count/{r}" for r in REASONS} <= set(m)
    assert all(isinstance(v, float) for v in m.values())


def test_pathological_answer_times_out_and_pool_recovers():
    """``10^{10^{10}}`` makes sympy run for ever: it must time out, the rest of the batch must be graded,
    and the next batch must run on a fresh pool."""
    with MathGrader(workers=2, timeout_s=1.5) as g:
        responses = [r"\boxed{1}", r"\boxed{10^{10^{10}}}", r"\boxed{2}", r"\boxed{\frac{2}{2}}"]
        t0 = time.monotonic()
        result = g.grade(responses, ["1"] * 4)
        elapsed = time.monotonic() - t0
        _assert_consistent(result, 4)
        assert result.correct.tolist() == [True, False, False, True]
        assert result.counts["timeout"] == 1 and result.counts["ok"] == 3
        assert elapsed < 15.0
        assert g.pools_started == 1  # the dropped pool is replaced lazily, on the next batch
        again = g.grade([r"\boxed{1}", r"\boxed{5}"], ["1", "5"])
        assert again.correct.tolist() == [True, True]
        assert again.counts["timeout"] == 0
        assert g.pools_started == 2


def test_hung_worker_is_killed_and_batch_goes_on(tmp_path):
    """A verifier that hangs for 60 s costs its answer ``timeout_s``, not the batch: the parent kills the
    hung process, the answers in flight beside it are resubmitted and graded."""
    pid_file = tmp_path / "pid"
    with MathGrader(workers=2, timeout_s=1.0, grade_fn=_workers.slow_on_marker) as g:
        responses = [rf"\boxed{{{k}}}" for k in range(6)]
        responses[2] = rf"\boxed{{SLEEP:{pid_file}}}"
        t0 = time.monotonic()
        result = g.grade(responses, [str(k) for k in range(6)])
        elapsed = time.monotonic() - t0
        _assert_consistent(result, 6)
        assert result.correct.tolist() == [True, True, False, True, True, True]
        assert result.counts["timeout"] == 1 and result.counts["ok"] == 5
        assert elapsed < 20.0  # not the 60 s the worker would sleep
        hung_pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(hung_pid, 0)
        # Two hangs in one batch, then a clean batch on the same grader.
        responses = [rf"\boxed{{SLEEP:{tmp_path / 'a'}}}", r"\boxed{1}", rf"\boxed{{SLEEP:{tmp_path / 'b'}}}"]
        result = g.grade(responses, ["1", "1", "1"])
        assert result.counts["timeout"] == 2 and result.correct.tolist() == [False, True, False]
        result = g.grade([r"\boxed{7}"] * 5, ["7"] * 5)
        assert result.correct.all() and result.counts["ok"] == 5


def test_dying_worker_is_counted_as_crash():
    """A worker process that dies breaks the pool: the answers in flight are retried alone, so only the
    answer that kills its worker again is scored as a crash."""
    with MathGrader(workers=2, timeout_s=10.0, grade_fn=_workers.dies_on_marker) as g:
        responses = [r"\boxed{1}", r"\boxed{DIE}", r"\boxed{1}", r"\boxed{2}", r"\boxed{DIE}", r"\boxed{1}"]
        result = g.grade(responses, ["1"] * 6)
        _assert_consistent(result, 6)
        assert result.correct.tolist() == [True, False, True, False, False, True]
        assert result.counts["crash"] == 2
        assert result.counts["ok"] == 4
        assert g.grade([r"\boxed{1}"], ["1"]).correct.tolist() == [True]


def test_raising_worker_is_counted_as_crash():
    with MathGrader(workers=2, timeout_s=10.0, grade_fn=_workers.raises_on_marker) as g:
        pools = g.pools_started
        result = g.grade([r"\boxed{RAISE}", r"\boxed{1}", r"\boxed{GARBAGE}"], ["1", "1", "1"])
        _assert_consistent(result, 3)
        assert result.correct.tolist() == [False, True, False]
        assert result.counts["crash"] == 2 and result.counts["ok"] == 1
        assert g.pools_started == max(pools, 1)  # an exception does not cost a pool restart


def test_close_and_reuse():
    g = MathGrader(workers=1, timeout_s=10.0)
    assert g.pools_started == 0  # no process before the first batch
    assert g.grade([r"\boxed{2}"], ["2"]).correct.tolist() == [True]
    g.close()
    assert g.grade([r"\boxed{2}"], ["3"]).correct.tolist() == [False]
    g.close()
    g.close()
    assert g.pools_started == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        MathGrader(workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        MathGrader(timeout_s=0)


def test_registry_builds_math_grader():
    assert "math" in REWARD_FNS
    g = REWARD_FNS.get("math")(workers=1, timeout_s=3.0)
    assert isinstance(g, MathGrader) and g.workers == 1 and g.timeout_s == 3.0
    g.close()
