"""``nemo-resrl plan``: the GPU presets fit 8 x H100 80 GB with 8 GiB to spare in every phase, a layout
that cannot fit exits 3 naming the phase and a change that makes it fit, a config error exits 2."""

from __future__ import annotations

import re

import pytest

from nemo_resrl.plan.cli import EXIT_DOES_NOT_FIT, load_plan_config, main
from nemo_resrl.plan.fixes import suggest_fixes, with_changes
from nemo_resrl.plan.phases import GIB, PHASES, make_plan

GPU_PRESETS = (
    "qwen3_1p7b",
    "qwen3_4b",
    "qwen3_8b",
    "qwen3_14b",
    "qwen3_32b",
    "qwen2p5_math_7b",
    "qwen2p5_7b",
    "qwen3_30b_a3b",
    "qwen3_235b_a22b",
)


@pytest.mark.parametrize(
    "model", [m if m == "qwen3_8b" else pytest.param(m, marks=pytest.mark.slow) for m in GPU_PRESETS]
)
def test_each_gpu_preset_fits_its_cluster_with_8_gib_to_spare_in_every_phase(model, capsys):
    assert main([f"model={model}"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("fits: every phase")
    cfg = load_plan_config([f"model={model}"])
    assert cfg.cluster.gpus_per_node == 8 and cfg.cluster.gpu_memory_gib == pytest.approx(79.6)
    plan = make_plan(cfg)
    assert [p.name for p in plan.phases] == list(PHASES)
    for phase in plan.phases:
        assert plan.capacity - phase.total >= 8 * GIB, (model, phase.name, phase.total / GIB)
    # the preset's comment states what the plan predicts: its peak per GPU and in which phase
    peak = max(plan.phases, key=lambda p: p.total)
    text = re.sub(r"\n#\s*", " ", open(f"nemo_resrl/conf/model/{model}.yaml").read())
    assert f"peak per GPU {peak.total / GIB:.1f} GiB in {peak.name}" in text, (model, peak)


def test_qwen3_32b_on_one_gpu_per_model_replica_does_not_fit_and_names_the_phases(capsys):
    code = main(["model=qwen3_32b", "actor.tensor_parallel=1", "actor.pipeline_parallel=1"])
    assert code == EXIT_DOES_NOT_FIT == 3
    out = capsys.readouterr().out
    failing = re.findall(r"^does not fit: (.+?) needs", out, flags=re.M)
    assert "training" in failing and "generation" in failing, out[-3000:]
    assert "actor.tensor_parallel=2" in out  # a change is named


def test_a_suggested_change_makes_its_phase_fit():
    cfg = load_plan_config(["model=qwen3_8b", "actor.recompute=none", "actor.micro_batch_size=16"])
    plan = make_plan(cfg)
    assert "training" in [p.name for p in plan.failing]
    fixes = suggest_fixes(cfg, plan)
    m = re.fullmatch(r"set (.+) \(training then ([\d.]+) GiB.*\)", fixes["training"])
    assert m, fixes
    changes = dict(kv.split("=", 1) for kv in m.group(1).split())
    typed = {k: int(v) if v.isdigit() else v for k, v in changes.items()}
    after = make_plan(with_changes(cfg, typed))
    assert after.phase("training").total + after.margin <= after.capacity
    assert after.phase("training").total / GIB == pytest.approx(float(m.group(2)), abs=0.05)


def test_a_config_error_exits_2_with_the_key(capsys):
    assert main(["model=qwen3_8b", "actor.tensor_parallel=3"]) == 2
    assert "actor.tensor_parallel" in capsys.readouterr().err
    assert main(["model=qwen3_8b", "cluster.gpu_memory_gib=-1"]) == 2
    assert "cluster.gpu_memory_gib" in capsys.readouterr().err


def test_the_actor_tensor_parallel_size_carries_to_the_colocated_engine(capsys):
    assert main(["model=qwen3_8b", "actor.tensor_parallel=8"]) == 0
    assert "rollout TP=8" in capsys.readouterr().out


def test_more_memory_per_gpu_leaves_more_margin():
    small = make_plan(load_plan_config(["model=qwen3_8b"]))
    big = make_plan(load_plan_config(["model=qwen3_8b", "cluster.gpu_memory_gib=139"]))
    for a, b in zip(small.phases, big.phases):
        if a.name == "generation":  # vLLM takes a fraction of the device: it grows with it
            assert b.total > a.total
        else:
            assert b.total == a.total
    assert big.engine.kv_cache > small.engine.kv_cache


def test_offload_costs_host_copies_at_the_pcie_bandwidth():
    offloaded = make_plan(load_plan_config(["model=qwen3_14b"]))
    faster = make_plan(load_plan_config(["model=qwen3_14b", "cluster.pcie_gbps=50"]))
    assert offloaded.seconds["offload"] > 0
    assert faster.seconds["offload"] == pytest.approx(offloaded.seconds["offload"] / 2)
    kept = make_plan(load_plan_config(["model=qwen3_8b"]))
    assert "offload" not in kept.seconds


def test_a_mixture_of_experts_plan_names_its_experts_and_expert_layout(capsys):
    assert main(["model=qwen3_30b_a3b"]) == 0
    head = capsys.readouterr().out.splitlines()[:2]
    assert "128 experts (8 per token, ffn 768)" in head[0] and "30.53 B parameters" in head[0]
    assert "actor TP=4 PP=1 EP=8 ETP=1 DP=2" in head[1]
    # one node at TP=1: the experts' unsharded optimizer state does not fit (docs/plan.md)
    assert (
        main(["model=qwen3_30b_a3b", "actor.tensor_parallel=1", "rollout.tensor_parallel=1"])
        == EXIT_DOES_NOT_FIT
    )
