"""For a phase that does not fit: the first single change (of a short list, in the order a user would try
them) after which it does, found by planning the changed configuration."""

from __future__ import annotations

import dataclasses
import math

from nemo_resrl.config import ConfigError, RunConfig
from nemo_resrl.plan.phases import GIB, Plan, make_plan


def with_changes(cfg: RunConfig, changes: dict[str, object]) -> RunConfig:
    """``cfg`` with dotted keys replaced (``{"actor.recompute": "full"}``), validated."""

    def put(obj, path: list[str], value):
        if len(path) == 1:
            return dataclasses.replace(obj, **{path[0]: value})
        return dataclasses.replace(obj, **{path[0]: put(getattr(obj, path[0]), path[1:], value)})

    for key, value in changes.items():
        cfg = put(cfg, key.split("."), value)
    return cfg.validate()


def _candidates(cfg: RunConfig, plan: Plan, phase: str) -> list[dict[str, object]]:
    a, r = cfg.actor, cfg.rollout
    offload = {"actor.offload.optimizer": True, "actor.offload.grads": True}
    wider_tp = {
        "actor.tensor_parallel": a.tensor_parallel * 2,
        "rollout.tensor_parallel": a.tensor_parallel * 2,
    }
    deeper_pp = {"actor.pipeline_parallel": a.pipeline_parallel * 2}
    smaller_mb = [
        {"actor.micro_batch_size": m} for m in (a.micro_batch_size // 2, 1) if 1 <= m < a.micro_batch_size
    ]
    if phase == "generation" and r.engine == "transformers":  # no utilisation to tune, tensor parallel 1
        return [offload, {**offload, "actor.offload.params": True}]
    if phase == "generation":
        gen = plan.phase("generation")
        others = gen.total - plan.engine.budget
        room = (plan.capacity - plan.margin - others) / plan.capacity
        util = math.floor(room * 20) / 20  # a multiple of 0.05
        lower = [{"rollout.gpu_memory_utilization": util}] if 0.05 <= util < r.gpu_memory_utilization else []
        higher = [{"rollout.gpu_memory_utilization": u} for u in (0.6, 0.7) if u > r.gpu_memory_utilization]
        return [offload, {**offload, "actor.offload.params": True}, *lower, *higher, wider_tp]
    if phase == "old log-probs":
        return [
            *smaller_mb,
            {"actor.logprob_chunk_rows": max(1, a.logprob_chunk_rows // 4)},
            wider_tp,
            deeper_pp,
        ]
    if phase == "training":
        full = [{"actor.recompute": "full"}] if a.recompute != "full" else []
        return [*full, *smaller_mb, *[{**f, **m} for f in full for m in smaller_mb], deeper_pp, wider_tp]
    if phase == "refit":
        return [offload, wider_tp]
    return [deeper_pp, wider_tp]


def suggest_fixes(cfg: RunConfig, plan: Plan) -> dict[str, str]:
    """Phase name -> "set KEY=VALUE ... (then X GiB)" for each failing phase that one candidate fixes."""
    out: dict[str, str] = {}
    for ph in plan.failing:
        for change in _candidates(cfg, plan, ph.name):
            try:
                other = make_plan(with_changes(cfg, change), plan.arch)
            except ConfigError:
                continue  # e.g. a tensor-parallel size that does not divide the heads
            after = other.phase(ph.name)
            if after.total + other.margin <= other.capacity and ph.name not in other.problems:
                keys = " ".join(
                    f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items()
                )
                rest = (
                    "" if other.fits else f"; still failing then: {', '.join(p.name for p in other.failing)}"
                )
                out[ph.name] = f"set {keys} ({ph.name} then {after.total / GIB:.1f} GiB{rest})"
                break
    return out
