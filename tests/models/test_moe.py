"""The Megatron actor on a tiny Qwen3-MoE (8 experts, 2 per token, every layer sparse) on gloo, at
expert parallelism EP=2, tensor parallelism TP=2 (with sequence parallelism, which megatron-core requires
for MoE under TP), EP=2 x TP=2, PP=2 and PP=2 x EP=2, against transformers and against EP=1.

Each layout runs once (``moe_probe.py``), over the same fixed batch; the tests compare what the jobs
recorded. Order matters: the EP=2 job writes the dist-checkpoint the EP=1 job loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.launch import run_module
from tests.models.moe_probe import on_disk
from tests.models.tiny_hf import make_tiny

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
# name: (tp, pp, ep, processes); the EP=1 reference has DP=2 like the EP=2 layout. Tensor parallelism (with
# sequence parallelism) and pipeline parallelism are each run together with EP=2 (the dense model's tests
# cover them alone), to keep the suite short
LAYOUTS = {
    "tp1pp1ep2": (1, 1, 2, 2),
    "tp1pp1ep1": (1, 1, 1, 2),
    "tp2pp1ep2": (2, 1, 2, 4),
    "tp1pp2ep2": (1, 2, 2, 4),
}
OTHERS = [n for n in LAYOUTS if n != "tp1pp1ep1"]
TOL = 1e-5


def _probe(work: Path, tp: int, pp: int, ep: int, nproc: int, *extra: str) -> None:
    res = run_module(
        "tests.models.moe_probe",
        "--work",
        work,
        "--tp",
        tp,
        "--pp",
        pp,
        "--ep",
        ep,
        *extra,
        nproc=nproc,
        timeout=600,
    )
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    work = tmp_path_factory.mktemp("moe")
    make_tiny(work / "qwen3_moe", "qwen3_moe")
    out = {}
    for name, layout in LAYOUTS.items():
        _probe(work, *layout)
        out[name] = (json.loads((work / f"{name}.json").read_text()), torch.load(work / f"{name}.pt"))
    _probe(work, 1, 1, 2, 2, "--unpatched")
    out["unpatched"] = (json.loads((work / "tp1pp1ep2_unpatched.json").read_text()), {})
    out["initial"] = on_disk(work / "qwen3_moe")
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_and_penultimate_equal_transformers(runs, layout):
    res, _ = runs[layout]
    assert res["logits_diff"] < TOL
    assert res["penultimate_max_diff"] < TOL and res["penultimate_tokens"] > 0


def test_ep2_without_the_bridge_expert_renumbering_loads_the_wrong_experts(runs):
    """Negative control for ``nemo_resrl.compat.bridge_moe``: rank 1's experts come from HF experts 0-3."""
    assert runs["unpatched"][0]["logits_diff"] > 0.1


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_export_gives_back_every_checkpoint_tensor_bit_for_bit(runs, layout):
    res, _ = runs[layout]
    # embeddings, lm_head, final norm; per layer 4 projections, 2 q/k norms, 2 norms, router, 8 x 3 experts
    assert res["export_tensors"] == 3 + 2 * (4 + 2 + 2 + 1 + 8 * 3) and res["export_exact"]
    assert res["export_missing"] == [] and res["export_extra"] == []


@pytest.mark.parametrize("layout", OTHERS)
def test_logprobs_and_one_optimizer_step_equal_ep1(runs, layout):
    ref_res, ref = runs["tp1pp1ep1"]
    res, got = runs[layout]
    torch.testing.assert_close(got["logp"], ref["logp"], atol=TOL, rtol=0)
    assert res["step_metrics"]["grad_norm"] == pytest.approx(ref_res["step_metrics"]["grad_norm"], rel=1e-5)
    assert res["step_metrics"]["loss"] == pytest.approx(ref_res["step_metrics"]["loss"], rel=1e-5)
    for k, w in ref["weights_after_step"].items():
        torch.testing.assert_close(got["weights_after_step"][k], w, atol=TOL, rtol=0, msg=k)


def test_the_step_moved_every_expert_and_left_the_router(runs):
    """The comparisons above mean something: every expert matrix moved (by about lr), the frozen router
    (HF ``mlp.gate``) did not, on every layout."""
    initial = runs["initial"]
    after = runs["tp1pp1ep1"][1]["weights_after_step"]
    experts = [k for k in after if ".mlp.experts." in k]
    routers = [k for k in after if k.endswith("mlp.gate.weight")]
    assert len(experts) == 2 * 8 * 3 and len(routers) == 2
    for k in experts:
        assert (after[k] - initial[k]).abs().max() > 1e-3, k
    for k in routers:
        assert torch.equal(after[k], initial[k]), k
    assert all(runs[name][0]["router_frozen"] for name in LAYOUTS)


def test_dist_checkpoint_saved_at_ep2_loads_at_ep1_with_the_same_logits(runs):
    assert runs["tp1pp1ep1"][0]["ckpt_ep2_load_diff"] < TOL
