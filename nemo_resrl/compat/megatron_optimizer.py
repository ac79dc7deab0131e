"""Workarounds for megatron-core 0.16's distributed optimizer with torch's Adam (no Apex / TE fused
Adam), needed to load an optimizer checkpoint correctly. Both are exercised by the actor's resume test
(``tests/models/test_actor.py``: a resumed run equals the uninterrupted one), which fails without them.

``ensure_optimizer_state``  a fresh optimizer has no Adam state; megatron-core 0.16 builds its loading
                            template from the CURRENT state and asserts on the missing step.
``restore_adam_step``       megatron-core 0.16 restores the Adam step into ``param_groups`` and then
                            overwrites it with the loading optimizer's own (non-persistent) value, so the
                            bias correction would use the wrong step.
"""

from __future__ import annotations

import torch

# Adam implementations megatron-core builds: torch's without Apex / TransformerEngine, TransformerEngine's or
# Apex's FusedAdam (same per-parameter exp_avg / exp_avg_sq; their step is kept per parameter group)
FUSED_ADAMS = ("FusedAdam",)


def inner_adams(optimizer) -> list[torch.optim.Optimizer]:
    """The Adam / AdamW optimizers (torch's, or a FusedAdam) inside a megatron (chained) optimizer."""
    out = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Adam | torch.optim.AdamW) or type(inner).__name__ in FUSED_ADAMS:
            out.append(inner)
    return out


@torch.no_grad()
def ensure_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its state tensors (and step) before a checkpoint is loaded into it: a step
    on zero gradients creates them, as megatron's own dummy-state initialiser does; every value it touches
    (parameters, moments, step) is then overwritten by the checkpoint."""
    for inner in inner_adams(optimizer):
        params = [p for g in inner.param_groups for p in g["params"]]
        if params and any(len(inner.state[p]) == 0 for p in params):
            for p in params:
                p.grad = torch.zeros_like(p)
            inner.step()
            inner.zero_grad(set_to_none=True)


def restore_adam_step(optimizer, loaded: dict) -> None:
    """Put the saved Adam step count (from the loaded optimizer state dict) back into torch Adam's
    per-parameter state."""
    groups = (loaded.get("optimizer") or {}).get("param_groups") or []
    steps = {g["step"] for g in groups if "step" in g}
    if len(steps) != 1:
        return
    step = float(steps.pop())
    for inner in inner_adams(optimizer):
        for st in inner.state.values():
            if "step" in st:
                st["step"] = torch.tensor(step, dtype=torch.float32)
        for group in inner.param_groups:  # a FusedAdam counts its steps per group
            if "step" in group:
                group["step"] = int(step)


def load_optimizer_state(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` under ``no_grad``: megatron-core 0.16's dp_reshardable loader
    copies into fp32 model params in place without it (its fs_model_space loader has the decorator), which
    autograd rejects; then the Adam step is put back (``restore_adam_step``)."""
    with torch.no_grad():
        optimizer.load_state_dict(state)
    restore_adam_step(optimizer, state)
