"""Learning-rate warmup and decay of the actor's optimizer (megatron's OptimizerParamScheduler)."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.config.actor import OptimConfig
from nemo_resrl.models.build import make_lr_scheduler


def _lrs(cfg: OptimConfig, steps: int) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=123.0)
    sched = make_lr_scheduler(opt, cfg)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        sched.step(1)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_linear_warmup_then_linear_decay_to_min_lr():
    lrs = _lrs(OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=3, decay_style="linear"), 9)
    # warmup: lr/4 -> lr linearly over 4 steps (the first step is not at lr 0)
    assert lrs[:5] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])
    # decay: 1.0 -> 0.1 over 3 steps, then min_lr holds
    assert lrs[5:] == pytest.approx([0.7, 0.4, 0.1, 0.1, 0.1])


def test_constant_without_warmup_or_decay():
    assert _lrs(OptimConfig(lr=3e-6), 5) == pytest.approx([3e-6] * 6)


def test_cosine_decay_passes_the_midpoint():
    lrs = _lrs(OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=4, decay_style="cosine"), 4)
    assert lrs[0] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.5) and lrs[4] == pytest.approx(0.0)
