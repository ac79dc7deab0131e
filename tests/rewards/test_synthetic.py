"""Tests of nemo_resrl.rewards.synthetic: seeded reasoning-gym prompts and their grader."""

import pytest
import torch

from nemo_resrl.rewards import REWARD_FNS, SyntheticGrader, build_synthetic_prompts, extract_final_answer

TASKS = ["basic_arithmetic", "chain_sum", "gsm_symbolic", "simple_equations", "leg_counting"]


@pytest.mark.parametrize("task", TASKS)
def test_prompts_are_deterministic_per_seed(task):
    a = build_synthetic_prompts(task, size=8, seed=123)
    b = build_synthetic_prompts(task, size=8, seed=123)
    c = build_synthetic_prompts(task, size=8, seed=124)
    assert len(a) == 8
    assert a == b
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]
    for r in a:
        assert set(r) == {"prompt", "answer", "task", "entry"}
        assert r["task"] == task
        assert isinstance(r["prompt"], str) and r["prompt"]
        assert r["prompt"] == r["entry"]["question"] and r["answer"] == r["entry"]["answer"]


def test_task_kwargs_reach_the_task_config():
    records = build_synthetic_prompts("basic_arithmetic", size=6, seed=0, min_terms=2, max_terms=2)
    assert all(r["entry"]["metadata"]["num_terms"] == 2 for r in records)
    with pytest.raises(ValueError):
        build_synthetic_prompts("basic_arithmetic", size=0, seed=0)


@pytest.mark.parametrize(
    "template",
    [
        "Working... so the result is \\boxed{{{}}}.",
        "Let me think.\n<answer>{}</answer>",
        "Step 1: 3 + 4 = 7.\nThe answer is {}.",
        "Some work with 99 in it.\nAnswer: {}",
        "Final: {}",  # last number
    ],
)
def test_gold_answers_score_as_correct(template):
    records = [r for task in TASKS for r in build_synthetic_prompts(task, size=4, seed=7)]
    responses = [template.format(r["answer"]) for r in records]
    result = SyntheticGrader().grade(responses, records)
    assert result.correct.all(), [(r["task"], r["answer"]) for r, c in zip(records, result.correct) if not c]
    assert torch.equal(result.rewards, torch.ones(len(records)))
    assert result.counts["ok"] == len(records)


def test_wrong_and_missing_answers_score_zero():
    records = build_synthetic_prompts("basic_arithmetic", size=4, seed=1)
    wrong = [f"\\boxed{{{int(float(r['answer'])) + 1}}}" for r in records]
    result = SyntheticGrader().grade(wrong + ["I do not know."], records + records[:1])
    assert result.correct.tolist() == [False] * 5
    assert result.rewards.sum().item() == 0.0
    assert result.counts["ok"] == 4
    assert result.counts["no_answer"] == 1


def test_partial_credit_only_when_not_binary():
    # fraction_simplification gives partial credit for an unsimplified fraction of the right value.
    records = build_synthetic_prompts("fraction_simplification", size=1, seed=3)
    entry = records[0]["entry"]
    n, d = entry["metadata"]["simplified_numerator"], entry["metadata"]["simplified_denominator"]
    response = f"\\boxed{{{2 * n}/{2 * d}}}"
    binary = SyntheticGrader().grade([response], records)
    raw = SyntheticGrader(binary=False).grade([response], records)
    assert binary.rewards.item() == 0.0 and not binary.correct.item()
    assert 0.0 < raw.rewards.item() < 1.0 and not raw.correct.item()


def test_crashing_scorer_is_counted_not_raised():
    records = build_synthetic_prompts("chain_sum", size=3, seed=5)

    def broken_scorer(answer, entry):
        if answer == records[1]["answer"]:
            raise KeyError("scorer bug")
        return 1.0

    def nan_scorer(answer, entry):
        return float("nan")

    responses = [f"\\boxed{{{r['answer']}}}" for r in records]
    result = SyntheticGrader(scorers={"chain_sum": broken_scorer}).grade(responses, records)
    assert result.correct.tolist() == [True, False, True]
    assert result.counts["crash"] == 1 and result.counts["ok"] == 2
    result = SyntheticGrader(scorers={"chain_sum": nan_scorer}).grade(responses, records)
    assert result.counts["crash"] == 3 and result.rewards.sum().item() == 0.0
    # A record of an unknown task: the scorer lookup itself fails, counted the same way.
    bad = dict(records[0], task="no_such_task")
    result = SyntheticGrader().grade([responses[0], responses[0]], [bad, records[0]])
    assert result.correct.tolist() == [False, True]
    assert result.counts["crash"] == 1


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="1 responses but 0 records"):
        SyntheticGrader().grade(["x"], [])


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"blah \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        ("<answer>1</answer> and <answer> 7 </answer> then 9", "7"),
        (r"<answer>3</answer> but \boxed{4}", "4"),  # a box beats the tags
        ("So the answer is **42**.\nThanks", "42"),
        ("Answer: $138/583$", "138/583"),
        ("The answer is: east.", "east"),
        ("The answer is\n5", "5"),  # nothing after the phrase on its line: the last number
        ("we get 8-3", "3"),
        ("it is -3", "-3"),
        ("total 1,234 apples", "1234"),
        ("ratio 3 / 4", "3/4"),
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_registry_builds_synthetic_grader():
    assert set(REWARD_FNS.names()) >= {"math", "reasoning_gym"}
    with REWARD_FNS.get("reasoning_gym")(binary=False) as g:
        assert isinstance(g, SyntheticGrader) and g.binary is False
