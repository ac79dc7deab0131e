"""Conversion round trips against live Megatron actors at TP=2, PP=2 and EP=2 (gloo, tiny random models).

to HF: an actor trained one step at TP=2 (Qwen3, untied; Qwen2 with q / k / v biases), PP=2 (Llama, tied
embeddings) or EP=2 (Qwen3-MoE, 8 experts) saves a checkpoint; ``convert_to_hf`` turns it into an HF
directory; transformers' logits on a fixed batch equal the Megatron actor's, and the tensors equal
megatron-bridge's own export of the live model.

from HF: ``convert_from_hf`` of the HF model is loaded by an actor of ANOTHER random model at its layout;
its logits then equal transformers' on the original model (and differed before the load).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_resrl.convert.from_hf import convert_from_hf
from nemo_resrl.convert.to_hf import convert_to_hf
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.distributed
# name: (family, tp, pp, ep)
LAYOUTS = {
    "qwen3_tp2pp1": ("qwen3", 2, 1, 1),
    "llama_tp1pp2": ("llama", 1, 2, 1),
    "qwen2_tp2pp1": ("qwen2", 2, 1, 1),
    "qwen3_moe_tp1pp1ep2": ("qwen3_moe", 1, 1, 2),
}
FAMILIES = ("qwen3", "llama", "qwen2", "qwen3_moe")
# the development loop runs the Qwen3 TP=2 job; the PP=2 Llama (tied), the Qwen2 (biases split per query
# group and over TP) and the MoE (experts over expert-parallel ranks, per-expert HF tensors) jobs are slow
PARAMS = [pytest.param(k, marks=pytest.mark.slow) for k in LAYOUTS]  # each converts at its layout: slow tier
TOL = 1e-5


def _load_safetensors_dir(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _hf_logits(path: Path) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    from tests.models.actor_probe import fixed_batch

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(t[None]).logits[0] for t in fixed_batch().tokens]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("convert")
    for family in FAMILIES:
        tie = family == "llama"
        make_tiny(work / family, family, seed=0, tie=tie)
        make_tiny(work / f"{family}_other", family, seed=1, tie=tie)
        convert_from_hf(work / family, work / f"{family}_from_hf")
    return work


_RAN: set[str] = set()


def layout_run(work: Path, name: str) -> Path:
    """The probe's job for layout ``name`` (run once per module, when a test first needs it)."""
    if name not in _RAN:
        family, tp, pp, ep = LAYOUTS[name]
        args = ["--work", work, "--family", family, "--tp", tp, "--pp", pp, "--ep", ep]
        res = run_module("tests.convert.convert_probe", *args, nproc=2, timeout=600)
        assert res.returncode == 0 and f"PROBE OK {name}" in res.stdout, (
            res.stdout[-3000:] + res.stderr[-6000:]
        )
        _RAN.add(name)
    return work / name


@pytest.mark.parametrize("layout", PARAMS)
def test_to_hf_logits_equal_the_megatron_actor(work, layout, tmp_path):
    family = LAYOUTS[layout][0]
    run = layout_run(work, layout)
    hf = convert_to_hf(run / "ckpt", tmp_path / "hf", max_shard_bytes=100_000)  # a step dir: finds actor/
    assert (
        len(list(hf.glob("model-*-of-*.safetensors"))) > 1 and (hf / "model.safetensors.index.json").is_file()
    )
    logits = torch.load(run / "logits.pt")
    assert _max_diff(_hf_logits(hf), logits["trained"]) < TOL
    # the step moved the weights: the original model's logits differ (so the comparison can fail)
    assert _max_diff(_hf_logits(work / family), logits["trained"]) > 1e-3


@pytest.mark.parametrize("layout", PARAMS)
def test_to_hf_tensors_equal_the_bridge_export_of_the_live_model(work, layout, tmp_path):
    run = layout_run(work, layout)
    hf = convert_to_hf(run / "ckpt" / "actor", tmp_path / "hf")
    got, ref = _load_safetensors_dir(hf), _load_safetensors_dir(run / "bridge_export")
    assert ("lm_head.weight" in got) == (LAYOUTS[layout][0] != "llama")  # llama: tied, no lm_head
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == (LAYOUTS[layout][0] == "llama") and cfg["torch_dtype"] == "float32"


@pytest.mark.parametrize("layout", PARAMS)
def test_from_hf_checkpoint_loads_at_tp2_and_pp2_with_the_hf_logits(work, layout):
    family = LAYOUTS[layout][0]
    logits = torch.load(layout_run(work, layout) / "logits.pt")
    ref = _hf_logits(work / family)
    assert _max_diff(logits["other"], ref) > 1e-2  # the other model really is another model
    assert _max_diff(logits["loaded"], ref) < TOL


@pytest.mark.slow
def test_vllm_loads_the_converted_model_with_its_log_probs(work, tmp_path):
    """vLLM's log-probs of its own samples equal transformers' on the converted directory."""
    hf = convert_to_hf(layout_run(work, "qwen3_tp2pp1") / "ckpt", tmp_path / "hf", max_shard_bytes=100_000)
    res = run_module("tests.convert.vllm_probe", hf, tmp_path / "vllm.pt", timeout=600)
    assert res.returncode == 0 and "PROBE OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
    got = torch.load(tmp_path / "vllm.pt")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    worst = 0.0
    for i, resp, lp in zip(got["index"].tolist(), got["responses"], got["logprobs"], strict=True):
        p = got["prompts"][i]
        with torch.no_grad():
            logits = model(torch.tensor([p + resp])).logits[0, len(p) - 1 : -1]
        ref = torch.log_softmax(logits.double(), -1)[torch.arange(len(resp)), torch.tensor(resp)]
        worst = max(worst, float((ref - lp.double()).abs().max()))
    assert len(got["responses"]) == 4 and all(len(r) == 12 for r in got["responses"])
    assert worst < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_to_megatron_to_hf_is_bit_exact(work, family, tmp_path):
    back = convert_to_hf(work / f"{family}_from_hf", tmp_path / "back")
    assert _load_safetensors_dir(back).keys() == _load_safetensors_dir(work / family).keys()
    ref = _load_safetensors_dir(work / family)
    for k, v in _load_safetensors_dir(back).items():
        assert torch.equal(v, ref[k]), k


def test_bf16_output_loads_in_transformers(work, tmp_path):
    run = layout_run(work, "qwen3_tp2pp1")
    hf = convert_to_hf(run / "ckpt", tmp_path / "bf16", dtype="bf16")
    assert json.loads((hf / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in _load_safetensors_dir(hf).values())
    logits = torch.load(run / "logits.pt")["trained"]
    assert _max_diff(_hf_logits(hf), logits) < 0.1  # bf16 rounding of the weights only
