"""The plan's parameter, gradient, master-weight and optimizer bytes: megatron-core's buffer layout rules
(unit tests) and, exactly, the tensors of the built Megatron actor at TP=2 x PP=2 x DP=2 (a probe)."""

from __future__ import annotations

import json
import math

import pytest

from nemo_resrl.plan.params import ParamSpec, buffer_layout, shard_elements
from tests.models.tiny_hf import make_tiny
from tests.plan.actor_memory_probe import MODELS

PARAMS = [ParamSpec("a", 100), ParamSpec("b", 64), ParamSpec("c", 1), ParamSpec("d", 300)]


def test_without_the_distributed_optimizer_the_buffer_is_the_parameters_back_to_back_in_reverse():
    layout = buffer_layout(PARAMS, dp=4, distributed_optimizer=False)
    assert layout.numel == 465 and layout.buckets == [(0, 465)]
    assert layout.index["d"] == (0, 300, 0) and layout.index["a"] == (365, 465, 0)


def test_the_distributed_optimizer_starts_each_parameter_at_64_and_pads_the_bucket_for_data_parallel():
    for dp in (1, 2, 3, 8):
        layout = buffer_layout(PARAMS, dp=dp, distributed_optimizer=True)
        starts = {name: s for name, (s, _, _) in layout.index.items()}
        assert all(s % 64 == 0 for s in starts.values()), starts
        assert starts == {"d": 0, "c": 320, "b": 384, "a": 448}  # 300 -> 320, 321 -> 384, 448
        assert layout.numel % math.lcm(dp, 128) == 0 and 548 <= layout.numel < 548 + math.lcm(dp, 128)
        # the data-parallel ranks' optimizer ranges cover every parameter element exactly once
        assert sum(shard_elements(layout, dp, r)[0] for r in range(dp)) == 465


def test_an_embedding_shared_across_pipeline_stages_gets_a_bucket_of_its_own():
    params = [ParamSpec("embedding", 256, shared_embedding=True), *PARAMS]
    layout = buffer_layout(params, dp=2, distributed_optimizer=True)
    assert len(layout.buckets) == 2
    assert layout.index["embedding"][2] == 1 and {b for _, _, b in list(layout.index.values())[:-1]} == {0}
    assert layout.buckets[1][0] == layout.buckets[0][1] and layout.buckets[1][1] - layout.buckets[1][0] == 256
    # not shared (or without the distributed optimizer): one bucket
    assert len(buffer_layout(params, dp=2, distributed_optimizer=False).buckets) == 1


@pytest.mark.slow
def test_the_planned_bytes_equal_the_built_actor_at_tp2_pp2_dp2(tmp_path, torchrun):
    """Every rank of an 8-process TP=2 x PP=2 x DP=2 job, for tiny Qwen3, Qwen2 (q / k / v biases) and
    Llama models, tied and untied, bf16 and fp32, with and without the distributed optimizer, and a tiny
    Qwen3-MoE at EP=2 (its experts in a second buffer sharded over the expert-data-parallel ranks, its
    frozen router in none): parameter buffers, fp32 gradient buffers, fp32 master shard and Adam's
    moments, byte for byte."""
    for name, family, tie in (
        ("qwen3", "qwen3", False),
        ("qwen3_tied", "qwen3", True),
        ("llama", "llama", False),
        ("llama_tied", "llama", True),
        ("qwen2", "qwen2", False),
        ("qwen3_moe", "qwen3_moe", False),
    ):
        make_tiny(tmp_path / name, family, tie=tie)
    args = ("--work", tmp_path, "--tp", 2, "--pp", 2, "--ep", 2)  # the MoE: EP=2 x expert-DP=2 per stage
    res = torchrun("tests.plan.actor_memory_probe", *args, nproc=8)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    masters = set()
    for rank in range(8):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(got["records"]) == len(MODELS)
        for rec in got["records"]:
            assert rec["measured"] == rec["planned"], (rank, got["layout"], rec)
            assert rec["measured"]["params"] > 0 and rec["measured"]["optimizer"] > 0
            masters.add(rec["measured"]["master"])
    assert 0 in masters and len(masters) > 2  # fp32 models hold none; the shards differ by rank and stage
