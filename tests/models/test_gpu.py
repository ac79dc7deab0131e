"""CUDA checks (marked ``gpu``: skipped on machines without a GPU, where every other test runs on CPU).

Nothing here has run yet: the project has been developed on CPU-only machines. docs/benchmarks.md says
"not measured" for every GPU number until a run of these (and of the benchmarks) is recorded.
"""

from __future__ import annotations

import json

import pytest
import torch

from nemo_resrl.models.logprobs import vocab_parallel_logprobs
from tests.launch import run_module
from tests.models.tiny_hf import make_tiny

pytestmark = pytest.mark.gpu


def test_chunked_logprobs_on_cuda_equal_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 1001, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 1001, (37,), generator=g)
    logp, ent = vocab_parallel_logprobs(x.float().cuda(), y.cuda(), chunk_rows=8, with_entropy=True)
    ref = torch.log_softmax(x, -1)
    torch.testing.assert_close(logp.double().cpu(), ref.gather(-1, y[:, None])[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double().cpu(), -(ref.exp() * ref).sum(-1), atol=1e-4, rtol=0)


def test_the_actor_on_one_gpu_matches_transformers_and_trains(tmp_path):
    make_tiny(tmp_path / "qwen3", "qwen3")
    res = run_module("tests.models.gpu_probe", tmp_path / "qwen3", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    r = json.loads(res.stdout.split("RESULT ")[-1].splitlines()[0])
    assert r["device"].startswith("cuda")
    assert r["logit_diff"] < 1e-4 and r["logp_diff"] < 1e-4
    assert r["step_finite"] and r["step_changed_logp"] > 1e-6
