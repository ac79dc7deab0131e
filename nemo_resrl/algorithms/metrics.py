"""Evaluation metrics (docs/algorithm.md §9): Avg@k, unbiased pass@k (Chen et al. 2021), maj@k."""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Hashable, Sequence

from nemo_resrl.common import require


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples of which ``c`` are correct:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k / i) (no overflow)."""
    require(n >= 1 and 0 <= c <= n, f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    require(1 <= k <= n, f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct_counts: Sequence[int], n: int | Sequence[int], k: int) -> float:
    """Mean of ``pass_at_k`` over problems; ``n`` per problem or one for all."""
    require(len(correct_counts) > 0, "no problems")
    ns = [int(n)] * len(correct_counts) if isinstance(n, numbers.Integral) else list(n)
    require(len(ns) == len(correct_counts), "n and correct_counts differ in length")
    return sum(pass_at_k(ni, ci, k) for ni, ci in zip(ns, correct_counts)) / len(correct_counts)


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Avg@k: mean over problems of (correct samples / samples); ``correct[p]``: problem p's k verdicts."""
    require(len(correct) > 0, "no problems")
    require(all(len(c) > 0 for c in correct), "every problem needs at least one sample")
    return sum(sum(map(bool, c)) / len(c) for c in correct) / len(correct)


def maj_at_k(
    answers: Sequence[Sequence[Hashable | None]], correct: Sequence[Sequence[bool]], k: int
) -> float:
    """maj@k: majority vote over each problem's first ``k`` extracted answers (None = unparsable, no vote);
    ties go to the answer seen first. A problem counts as solved if the winning answer's first sample is
    correct; a problem with no parsable answer among the k counts as wrong. This is ONE draw of the vote;
    ``nemo-resrl eval`` reports its expectation over random k-subsets of all n samples
    (``nemo_resrl.evaluation.metrics.expected_maj_at_k``), which uses every sample."""
    require(
        len(answers) == len(correct) and len(answers) > 0,
        "answers and correct must be non-empty, equal length",
    )
    solved = 0
    for ans, cor in zip(answers, correct):
        require(len(ans) == len(cor), "answers and correct differ in length for a problem")
        require(1 <= k <= len(ans), f"need 1 <= k <= {len(ans)}, got {k}")
        votes = Counter(a for a in ans[:k] if a is not None)
        if not votes:
            continue
        best = max(votes.values())
        winner = next(a for a in ans[:k] if a is not None and votes[a] == best)
        solved += bool(cor[ans.index(winner)])
    return solved / len(answers)
