"""Benchmark files with bad rows (counted, kept in the denominator), the eval config, and the report
arithmetic on hand-graded samples."""

from __future__ import annotations

import pytest

from nemo_resrl.config import CONF_DIR, ConfigError, load_eval_config
from nemo_resrl.evaluation.benchmarks import BenchmarkError, load_benchmark
from nemo_resrl.evaluation.runner import aggregate, problem_metrics


def test_bad_rows_are_kept_and_counted(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text(
        '{"problem": "1+1?", "answer": "2"}\n'
        "not json\n"
        "\n"
        '{"problem": "", "answer": "3"}\n'
        '{"problem": "2+2?"}\n'
        '{"problem": "AIME", "answer": 204}\n'
        "[1, 2]\n"
    )
    b = load_benchmark(f, "b", "problem", "answer")
    assert [p.line for p in b.problems] == [1, 2, 4, 5, 6, 7]
    assert [p.issue for p in b.problems] == [
        None,
        "invalid_json",
        "missing_problem",
        "missing_answer",
        None,
        "invalid_json",
    ]
    assert b.problems[4].answer == "204"  # integer answers are text
    assert b.issues == {"invalid_json": 2, "missing_problem": 1, "missing_answer": 1}


def test_a_file_without_usable_rows_or_missing_is_an_error(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "1+1?", "solution": "2"}\n')
    with pytest.raises(BenchmarkError, match="no row of .* has both a 'problem' and an 'answer'"):
        load_benchmark(f, "q", "problem", "answer")
    assert load_benchmark(f, "q", "question", "solution").problems[0].answer == "2"
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark(tmp_path / "none.jsonl", "n", "problem", "answer")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(BenchmarkError, match="has no rows"):
        load_benchmark(tmp_path / "e.jsonl", "e", "problem", "answer")


def test_the_shipped_eval_yaml_validates_and_bad_values_name_their_key():
    cfg = load_eval_config(["model=m", "benchmarks=[a/aime24.jsonl,b/math500.jsonl]", "sampling.n=16"])
    assert (CONF_DIR / "eval.yaml").is_file()
    assert cfg.benchmark_names() == ["aime24", "math500"] and cfg.sampling.n == 16
    for bad, key in [
        (["sampling.temperature=0"], "sampling.temperature"),
        (["sampling.nn=3"], "nn"),
        (["prompt_template=hello"], "prompt_template"),
        (["names=[x]"], "names"),
        (["dtype=fp8"], "dtype"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_eval_config(["model=m", "benchmarks=[a.jsonl,b.jsonl]", *bad])
    with pytest.raises(ConfigError, match="benchmarks"):
        load_eval_config(["model=m"])


def test_report_arithmetic_on_hand_graded_samples():
    ks = [1, 2, 4]
    # problem A: 1 of 4 right; answers 5 (right), 6, 6, none -> the majority (6) is wrong for k=4
    a = problem_metrics([True, False, False, False], ["5", "6", "6", None], ks)
    assert a["avg"] == 0.25 and a["pass"][1] == 0.25
    assert a["pass"][2] == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert a["pass"][4] == 1.0 and a["maj"][4] == 0.0
    # maj@2 by hand: pairs {5,6}x2 tie -> 1/2 each; {5,none} -> 1; {6,6} -> 0; {6,none}x2 -> 0
    assert a["maj"][2] == pytest.approx((0.5 + 0.5 + 1) / 6)
    b = problem_metrics([True] * 4, ["7"] * 4, ks)
    agg = aggregate([a, b], ks, 4)
    assert agg["n_problems"] == 2 and agg["avg@4"] == pytest.approx(0.625)
    assert agg["pass@k"]["2"] == pytest.approx((0.5 + 1) / 2) and agg["maj@k"]["4"] == pytest.approx(0.5)
