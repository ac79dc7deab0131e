"""The planner's ResRL term (``nemo_resrl.plan.resrl``): byte for byte what the pass allocates on every rank
of the stage owning layer L-2 (``resrl_memory_probe.py``, DP=2 and TP=2 on gloo, three settings that put
the peak in the fits, the residuals and the gating), and the fit time the plan shows for every preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_resrl.models.resrl_pass import PassSizes
from nemo_resrl.plan.cli import load_plan_config
from nemo_resrl.plan.phases import make_plan
from nemo_resrl.plan.resrl import PassDims, pass_bytes, pass_moments
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

GPU_PRESETS = [
    "qwen3_1p7b",
    "qwen3_4b",
    "qwen3_8b",
    "qwen2p5_math_7b",
    "qwen2p5_7b",
    "qwen3_14b",
    "qwen3_32b",
    "qwen3_30b_a3b",
    "qwen3_235b_a22b",
]


def _measure(work: Path, tp: int, nproc: int, dtype: str = "fp32") -> list[dict]:
    args = ["--work", work, "--tp", tp, "--dtype", dtype]
    res = run_module("tests.plan.resrl_memory_probe", *args, nproc=nproc, timeout=600)
    name = f"tp{tp}dp{nproc // tp}_{dtype}"
    assert res.returncode == 0 and f"PROBE OK {name}" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    return [json.loads((work / f"resrl_memory_{name}_{r}.json").read_text()) for r in range(nproc)]


def _check(ranks: list[dict]) -> set[str]:
    """Every computing rank's measured peak equals the plan's term; returns the parts that peaked."""
    parts = set()
    for rank in ranks:
        for case, r in rank.items():
            assert r["computes"] and r["weighted"], case  # every rank of the stage fits; weights below 1
            assert r["sizes"]["deferred"] is case.startswith("deferred"), case  # the layout asked for
            sizes, dims = PassSizes(**r["sizes"]), PassDims(**r["dims"])
            assert pass_bytes(sizes, dims) == r["peak"], (
                case,
                pass_moments(sizes, dims),
                r["peak"],
                r["where"],
                r["top"],
            )
            moments = pass_moments(sizes, dims)
            parts.add(max(moments, key=moments.get).split(",")[0].split(" ")[0])
    return parts


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("resrl_memory")
    make_tiny(w / "qwen3", "qwen3")
    return w


@pytest.mark.distributed
@pytest.mark.slow
def test_resrl_term_equals_what_the_pass_allocates_at_dp2(work):
    parts = _check(_measure(work, 1, 2))
    assert {"fit", "residuals", "gating"} <= parts  # each part of the formula was the peak once


@pytest.mark.distributed
@pytest.mark.slow
def test_resrl_term_equals_what_the_pass_allocates_at_tp2(work):
    assert "fit" in _check(_measure(work, 2, 2))


@pytest.mark.distributed
@pytest.mark.slow
def test_resrl_term_equals_what_the_pass_allocates_in_bf16(work):
    """bf16 states: the rows travel in bf16, the fit's LayerNorm makes a float32 copy first."""
    _check(_measure(work, 1, 2, "bf16"))


@pytest.mark.parametrize("model", GPU_PRESETS)
def test_every_preset_plans_its_fits_below_2_percent_of_the_step(model):
    plan = make_plan(load_plan_config([f"model={model}"]))
    fits = plan.seconds["ResRL fits"]
    assert 0 < fits <= 0.02 * sum(plan.seconds.values()), (model, fits, plan.seconds)
    term = next(c for c in plan.phase("old log-probs").components if c.name.startswith("ResRL"))
    assert term.bytes > 0


def test_a_non_resrl_algorithm_plans_no_fit():
    plan = make_plan(load_plan_config(["model=qwen3_8b", "algorithm=grpo"]))
    assert "ResRL fits" not in plan.seconds
    assert not any(c.name.startswith("ResRL") for c in plan.phase("old log-probs").components)


def test_more_groups_per_rank_cost_more_memory_and_time():
    base = make_plan(load_plan_config(["model=qwen3_8b"]))
    more = make_plan(load_plan_config(["model=qwen3_8b", "trainer.prompts_per_step=512"]))

    def term(p):
        return next(c for c in p.phase("old log-probs").components if c.name.startswith("ResRL")).bytes

    assert term(more) > term(base) and more.seconds["ResRL fits"] > base.seconds["ResRL fits"]
