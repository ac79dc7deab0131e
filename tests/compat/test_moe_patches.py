"""The two megatron-core patches mixture-of-experts models need without TransformerEngine, each shown
necessary: the operation fails without the patch and works with it. The patches are process-wide, so
each case runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _te_missing() -> bool:
    from nemo_resrl.compat import transformer_engine_available

    return not transformer_engine_available()


@pytest.mark.slow
@pytest.mark.skipif(not _te_missing(), reason="with TransformerEngine megatron defines te_general_gemm")
def test_router_gating_raises_name_error_without_patch_and_matches_mm_with_it():
    res = _python(
        """
        import torch
        from megatron.core.transformer.moe import moe_utils
        x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
        try:
            moe_utils.router_gating_linear(x, w, None, torch.float64)
            print("UNPATCHED RAN")
        except NameError as e:
            print("UNPATCHED NameError", e)
        from nemo_resrl.compat import megatron_moe
        assert megatron_moe.install() and not megatron_moe.install()  # the second call has nothing to do
        out = moe_utils.router_gating_linear(x, w, None, torch.float64)
        assert out.dtype == torch.float64 and torch.equal(out, x @ w.t()), out
        print("PATCHED OK")
        """
    )
    assert "UNPATCHED NameError" in res.stdout and "te_general_gemm" in res.stdout, res.stdout + res.stderr
    assert "PATCHED OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.slow
def test_torch_norm_refuses_sequence_parallel_without_patch_and_marks_weights_with_it():
    res = _python(
        """
        from megatron.core.transformer import TransformerConfig
        from megatron.core.transformer.torch_norm import WrappedTorchNorm
        cfg = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, normalization="RMSNorm")
        cfg.sequence_parallel = True  # set after __post_init__, which wants tensor parallelism for it
        try:
            WrappedTorchNorm(cfg, 8)
            print("UNPATCHED BUILT")
        except AssertionError as e:
            print("UNPATCHED AssertionError", e)
        from nemo_resrl.compat import megatron_norm
        megatron_norm.install()
        norm = WrappedTorchNorm(cfg, 8)
        assert norm.weight.sequence_parallel is True, "weight not marked for the tensor-parallel grad sum"
        assert cfg.sequence_parallel is True, "config not restored"
        cfg.sequence_parallel = False
        assert WrappedTorchNorm(cfg, 8).weight.sequence_parallel is False
        print("PATCHED OK", type(norm).__name__)
        """
    )
    assert "UNPATCHED AssertionError" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "PATCHED OK RMSNorm" in res.stdout, res.stderr[-3000:]
