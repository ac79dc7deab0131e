"""The check ``nemo-resrl train`` makes on a GPU before it allocates anything: the plan of the run for the
job it is really in (its world size, GPUs per node and the device's memory, in place of the ``cluster``
section's), refused when a phase does not fit (``cluster.enforce``: error | warn | off).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

from nemo_resrl.config import ConfigError, RunConfig
from nemo_resrl.plan.phases import GIB, Plan, make_plan

log = logging.getLogger(__name__)


def job_cluster(cfg: RunConfig, world_size: int, gpus_per_node: int, device_bytes: int) -> RunConfig:
    """``cfg`` with its cluster section describing the job: ``world_size`` GPUs, ``gpus_per_node`` of them
    per node (the whole job on one node when they do not divide), ``device_bytes`` each."""
    if gpus_per_node < 1 or world_size % gpus_per_node:
        gpus_per_node = world_size
    cluster = dataclasses.replace(
        cfg.cluster,
        nodes=world_size // gpus_per_node,
        gpus_per_node=gpus_per_node,
        gpu_memory_gib=device_bytes / GIB,
    )
    return dataclasses.replace(cfg, cluster=cluster)


def check_plan_at_launch(
    cfg: RunConfig,
    *,
    world_size: int,
    gpus_per_node: int,
    device_bytes: int,
    print_fn: Callable[[str], None] = print,
) -> Plan | None:
    """Plan ``cfg`` for this job; with ``cluster.enforce=error`` raise ``ConfigError`` naming each phase
    that does not fit and the change that would make it fit, with ``warn`` log it and go on. Returns the
    plan (None with ``off``)."""
    from nemo_resrl.plan.fixes import suggest_fixes
    from nemo_resrl.plan.report import verdict_lines

    if cfg.cluster.enforce == "off":
        return None
    from nemo_resrl.compat.te_stub import transformer_engine_available

    job = job_cluster(cfg, world_size, gpus_per_node, device_bytes)
    plan = make_plan(job, te_available=transformer_engine_available())
    where = f"{world_size} GPU(s) of {device_bytes / GIB:.1f} GiB"
    if plan.fits:
        print_fn(f"plan ({where}): {verdict_lines(plan)[0]}")
        return plan
    lines = verdict_lines(plan, suggest_fixes(job, plan))
    text = f"the plan for this job ({where}) does not fit (nemo-resrl plan shows the details):\n" + "\n".join(
        lines
    )
    if cfg.cluster.enforce == "error":
        raise ConfigError(
            f"cluster.enforce=error: {text}\n(cluster.enforce=warn starts it anyway: the plan can be wrong, "
            "docs/plan.md)"
        )
    log.warning("cluster.enforce=warn: %s", text)
    return plan


def check_cuda_job(cfg: RunConfig, print_fn: Callable[[str], None] = print) -> Plan | None:
    """``check_plan_at_launch`` on a CUDA device, with the job's shape from torchrun's environment
    (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) and the device's memory as CUDA reports it; nothing on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = torch.cuda.get_device_properties(torch.cuda.current_device())
    return check_plan_at_launch(
        cfg, world_size=world, gpus_per_node=local, device_bytes=device.total_memory, print_fn=print_fn
    )
