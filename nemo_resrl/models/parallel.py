"""Process groups for the actor: torch.distributed, megatron-core's model-parallel state, RNG seeds.

``init_parallel`` is idempotent per layout. Under torchrun (RANK / WORLD_SIZE in the environment) it
joins the launched job; a plain single process gets a world of one over an in-memory store (no port
to pick, so no race with other jobs). The backend is NCCL on GPU and gloo on CPU, where the CPU
patches of ``nemo_resrl.compat`` are applied first.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nemo_resrl.compat import apply_cpu_patches, running_on_cpu
from nemo_resrl.config.actor import ActorConfigError


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the tensor x pipeline x data-parallel grid."""

    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ep: int = 1  # expert parallel (mixture-of-experts models)

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def init_distributed(timeout_s: float = 1800.0) -> None:
    """Start torch.distributed if nothing has yet (torchrun job, or a world of one).

    The groups started here are destroyed at interpreter exit (``atexit``, while Python is still whole):
    a gloo group left to the interpreter's teardown can abort the process ("terminate called without an
    active exception", status -6) after a run that succeeded, because its worker threads still hold
    tensors that need the GIL to be freed. Seen intermittently at the end of a test probe under load."""
    if dist.is_initialized():
        return
    backend = "gloo" if running_on_cpu() else "nccl"
    timeout = timedelta(seconds=timeout_s)
    # NCCL: bound to this rank's device, so that communicators are created eagerly for it (not lazily,
    # group by group, at their first collective) and every group knows its device
    local = int(os.environ.get("LOCAL_RANK", "0")) if "RANK" in os.environ else 0
    kw = {}
    if backend == "nccl":
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout, **kw)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, **kw)
    atexit.register(_destroy_at_exit)


def _destroy_at_exit() -> None:
    # a colocated vLLM engine built its own groups on this process group: vLLM tears them down first (its
    # engine's own shutdown, later in the exit, then finds nothing left to destroy instead of failing on
    # the handles of groups already gone: "ValueError: Invalid process group specified")
    vllm_groups = sys.modules.get("vllm.distributed.parallel_state")
    try:
        if vllm_groups is not None:
            vllm_groups.destroy_model_parallel()
            vllm_groups.destroy_distributed_environment()
        destroy_parallel()
    except Exception as e:  # noqa: BLE001 - exiting anyway; say why the groups were left
        logging.getLogger(__name__).warning("process groups not destroyed at exit: %s", e)


def init_parallel(tp: int, pp: int, seed: int, ep: int = 1, etp: int = 1) -> ParallelLayout:
    """Initialise (or check) megatron's model-parallel state for a tp x pp layout (and, for mixture-of-experts
    models, ep expert-parallel ranks of etp expert-tensor-parallel ranks each); seed its RNGs."""
    init_distributed()
    apply_cpu_patches()
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ActorConfigError(
            f"world size {world} is not divisible by actor.tensor_parallel x pipeline_parallel = {tp * pp}"
        )
    if (world // pp) % (ep * etp) != 0:
        raise ActorConfigError(
            f"actor.expert_parallel x expert_tensor_parallel = {ep * etp} does not divide the {world // pp} "
            "ranks of a pipeline stage (world size / actor.pipeline_parallel)"
        )
    if ps.model_parallel_is_initialized():
        have = (
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
            ps.get_expert_model_parallel_world_size(),
        )
        if have[:2] != (tp, pp) or (ep > 1 and have[2] != ep):
            raise ActorConfigError(
                f"model parallel state already initialised as tp x pp x ep = {have}, not {(tp, pp, ep)}"
            )
    else:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
        )
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return current_layout()


def current_layout() -> ParallelLayout:
    from megatron.core import parallel_state as ps

    return ParallelLayout(
        world_size=dist.get_world_size(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        ep=ps.get_expert_model_parallel_world_size(),
    )


def destroy_parallel() -> None:
    """Tear down megatron's groups and torch.distributed (tests and scripts that rebuild a layout)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
