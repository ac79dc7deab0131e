"""The actor's megatron dist-checkpoints: the model (loads at any TP / PP layout), and optionally the
optimizer, the LR schedule and the step count. Collective over all ranks of the job.

A checkpoint directory also carries the HF config and tokenizer (``hf/``) and ``actor.json`` (layout,
step, what it holds), so ``nemo-resrl convert to-hf`` needs nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist

from nemo_resrl.compat.megatron_optimizer import ensure_optimizer_state, inner_adams, load_optimizer_state
from nemo_resrl.models.build import MegatronModel
from nemo_resrl.models.hf_files import ACTOR_META, HF_META_DIR, copy_hf_meta_files

OPTIM_SHARDINGS = ("dp_reshardable",)


def _sharded_state(
    m: MegatronModel, optimizer, scheduler, step: int | None, optim_sharding: str, loading: bool
):
    state = {"model": m.gpt.sharded_state_dict()}
    if optimizer is not None:
        meta = {"distrib_optim_sharding_type": optim_sharding}
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=loading, metadata=meta)
        state["scheduler"] = scheduler.state_dict()
        state["step"] = step
    return state


def save_checkpoint(
    m: MegatronModel,
    path: str | os.PathLike,
    *,
    optimizer=None,
    scheduler=None,
    step: int = 0,
    optim_sharding: str = "dp_reshardable",
) -> None:
    """Write a dist-checkpoint of the model (and, with ``optimizer``, its state, the schedule and
    ``step``). ``optim_sharding``: ``dp_reshardable`` (each rank writes its own shard, no gather); the
    optimizer state then loads at the same TP x PP. (megatron-core 0.16's ``fully_reshardable`` loader
    fails on torch's Adam ``step`` state, so it is not offered.)"""
    from megatron.core import dist_checkpointing

    if optim_sharding not in OPTIM_SHARDINGS:
        raise ValueError(f"optim_sharding must be one of {OPTIM_SHARDINGS}, got {optim_sharding!r}")
    if optimizer is not None and any(len(inner.state) == 0 for inner in inner_adams(optimizer)):
        raise ValueError(
            "the optimizer has no state before its first step, so there is none to save: save with "
            "with_optimizer=False (the model alone) or after a step"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    state = _sharded_state(m, optimizer, scheduler, step, optim_sharding, loading=False)
    from nemo_resrl.compat.megatron_checkpoint import results_queue_dies_with_trainer

    results_queue_dies_with_trainer()
    dist_checkpointing.save(state, str(path), sharded_strategy=_save_strategy(m))
    if dist.get_rank() == 0:
        copy_hf_meta_files(m.cfg.hf_path, path / HF_META_DIR)
        meta = {
            "hf_path": str(m.cfg.hf_path),
            "with_optimizer": optimizer is not None,
            "optim_sharding": optim_sharding,
            "tensor_parallel": m.layout.tp,
            "pipeline_parallel": m.layout.pp,
            "step": step,
        }
        (path / ACTOR_META).write_text(json.dumps(meta, indent=1))
    dist.barrier()


def _save_strategy(m: MegatronModel):
    """torch_dist, with the writes of tensors every data-parallel replica holds (the model's) spread over
    the replicas (megatron-core's fully parallel save, Megatron-LM's --ckpt-fully-parallel-save): without
    it replica 0 writes every one of them."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    strategy = get_default_save_sharded_strategy("torch_dist")
    if m.layout.dp > 1:
        strategy = FullyParallelSaveStrategyWrapper(
            strategy, ps.get_data_parallel_group(with_context_parallel=True)
        )
    return strategy


def load_checkpoint(
    m: MegatronModel, path: str | os.PathLike, *, optimizer=None, scheduler=None
) -> int | None:
    """Load a checkpoint written by ``save_checkpoint`` into ``m`` (model: any TP / PP layout) and, with
    ``optimizer``, its optimizer state and schedule; returns the saved step (None without optimizer)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    path = Path(path)
    meta_file = path / ACTOR_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an actor checkpoint (no {ACTOR_META})")
    meta = json.loads(meta_file.read_text())
    if optimizer is not None:
        if not meta["with_optimizer"]:
            raise ValueError(f"{path} holds no optimizer state (saved with with_optimizer=False)")
        same = (meta["tensor_parallel"], meta["pipeline_parallel"]) == (m.layout.tp, m.layout.pp)
        if meta["optim_sharding"] == "dp_reshardable" and not same:
            raise ValueError(
                f"{path}: optimizer state saved at tp x pp = {meta['tensor_parallel']} x "
                f"{meta['pipeline_parallel']} (dp_reshardable) cannot load at {m.layout.tp} x "
                f"{m.layout.pp}; load with with_optimizer=False or save with fully_reshardable"
            )
        ensure_optimizer_state(optimizer)
    state = _sharded_state(m, optimizer, scheduler, 0, meta["optim_sharding"], loading=True)
    # RETURN_ALL: keys missing from the checkpoint are left out of the load and reported instead of
    # failing deep inside DCP. Only modules' ``_extra_state`` may be missing (a checkpoint converted from
    # HF has none; TE's FP8 metadata then starts fresh); a missing weight is an error naming it.
    state, missing, _ = dist_checkpointing.load(state, str(path), strict=StrictHandling.RETURN_ALL)
    lacking = sorted(k for k in missing if "_extra_state" not in k)
    if lacking:
        raise ValueError(
            f"{path}: the checkpoint lacks {len(lacking)} tensors the model needs: {lacking[:4]}"
        )
    result = m.gpt.load_state_dict(state["model"], strict=False)
    bad = [k for k in result.missing_keys if not k.endswith("_extra_state")] + list(result.unexpected_keys)
    if bad:
        raise ValueError(f"{path}: model state mismatch after load: {bad[:4]}")
    step = None
    if optimizer is not None:
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    dist.barrier()
    return step
