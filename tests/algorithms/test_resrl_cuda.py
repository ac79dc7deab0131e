"""The public ResRL API on CUDA tensors (marked ``gpu``: skipped without a GPU).

A verl or NeMo RL trainer calls ``compute_resrl_weights`` with its tensors where they are: every index it
makes must live on their device, and the weights must equal the CPU's. The stated tolerance is 1e-4 on a
decaying spectrum: both devices run the same fit from the same integer-hashed start, so they differ by
float32 rounding (GEMM order) only.
"""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.algorithms import ResRLConfig
from nemo_resrl.algorithms.resrl import compute_resrl_weights, resrl_token_advantages
from nemo_resrl.algorithms.subspace import fit_subspaces, fit_workspace_bytes, principal_angles, rademacher

pytestmark = pytest.mark.gpu
CUDA_VS_CPU = 1e-4


def _groups(b=16, t=256, d=512, seed=0):
    """Two groups of representations with a decaying spectrum; half of each group correct."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
    s = torch.arange(1, d + 1, dtype=torch.float32).pow(-0.7)
    hidden = ((torch.randn(b, t, d, generator=g) * s) @ q + torch.randn(d, generator=g)) * 3
    mask = torch.arange(t)[None] < torch.randint(t // 4, t + 1, (b, 1), generator=g)
    gids = torch.arange(b) // (b // 2)
    correct = torch.arange(b) % 2 == 0
    adv = correct.float() * 2 - 1
    return hidden, mask, gids, adv, correct


def test_weights_on_cuda_equal_the_cpu_and_stay_on_the_device():
    hidden, mask, gids, adv, correct = _groups()
    cfg = ResRLConfig(max_rows=1024)
    cpu = compute_resrl_weights(hidden, mask, gids, adv, cfg, correct=correct, step=2)
    dev = [t.cuda() for t in (hidden, mask, gids, adv, correct)]
    gpu = compute_resrl_weights(*dev[:4], cfg, correct=dev[4], step=2)  # no response_ids: made on the device
    assert gpu.weights.is_cuda
    assert (cpu.weights[mask & ~correct[:, None]] < 1).any()
    assert float((gpu.weights.cpu() - cpu.weights).abs().max()) < CUDA_VS_CPU
    assert gpu.stats.as_metrics() == cpu.stats.as_metrics()
    adv_t, _ = resrl_token_advantages(*dev[:4], cfg, correct=dev[4], step=2)
    assert adv_t.is_cuda and torch.isfinite(adv_t).all()


def test_bf16_states_on_cuda():
    hidden, mask, gids, adv, correct = _groups(seed=1)
    cfg = ResRLConfig(max_rows=1024)
    ref = compute_resrl_weights(hidden.bfloat16().float(), mask, gids, adv, cfg, correct=correct)
    got = compute_resrl_weights(
        hidden.bfloat16().cuda(), mask.cuda(), gids.cuda(), adv.cuda(), cfg, correct=correct.cuda()
    )
    assert float((got.weights.cpu() - ref.weights).abs().max()) < CUDA_VS_CPU


def test_the_start_block_and_the_fit_agree_across_devices():
    assert torch.equal(rademacher([7, 2**62 + 3], 300, 40, "cuda").cpu(), rademacher([7, 2**62 + 3], 300, 40))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 700, 256, generator=g) * torch.arange(1, 257).pow(-0.8)
    counts = [700, 400, 90]
    a = fit_subspaces(x, counts, 32, seeds=[1, 2, 3])
    b = fit_subspaces(x.cuda(), counts, 32, seeds=[1, 2, 3])
    assert torch.equal(a.rank, b.rank.cpu())
    for i in range(3):
        r = int(a.rank[i])
        assert principal_angles(a.basis[i][:, :r], b.basis[i][:, :r].cpu()).max() < 1e-4


def test_the_fit_allocates_what_the_plan_says_on_cuda():
    """The planner's fit term against the CUDA caching allocator's peak: at least the tensors it counts,
    plus at most the cuBLAS / cuSOLVER workspaces the allocator also hands out."""
    groups, rows, d = 4, 2048, 1024
    x = torch.randn(groups, rows, d, device="cuda")
    fit_subspaces(x.clone(), [rows] * groups, 64, overwrite_input=True)  # workspaces and handles exist now
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fit = fit_subspaces(x, [rows] * groups, 64, overwrite_input=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    want = fit_workspace_bytes(groups, rows, d, 64, 64, 10)
    assert want <= peak <= want + 64 * 2**20, (peak, want)
    del fit
