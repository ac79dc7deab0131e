"""``nemo-resrl plan [overrides]``: print the plan of a run configuration; exit 0 when every phase fits, 3
when one does not (naming it and a change that makes it fit), 2 on a config error."""

from __future__ import annotations

import argparse
import sys

EXIT_DOES_NOT_FIT = 3


PLACEHOLDER = "unset-for-the-plan"


def load_plan_config(overrides: list[str], config_dir=None, name: str = "config"):
    """``load_config``, with ``actor.hf_path`` and ``data.path`` filled by a placeholder when the config
    leaves them unset (a plan needs neither the weights nor the data: ``actor.arch`` gives the model)."""
    from nemo_resrl.config import ConfigError, load_config

    extra: list[str] = []
    fillable = [
        k for k in ("actor.hf_path", "data.path") if not any(o.startswith(k + "=") for o in overrides)
    ]
    while True:
        try:
            return load_config([*overrides, *extra], config_dir=config_dir, name=name)
        except ConfigError as e:
            key = next((k for k in fillable if str(e).startswith(k + " ")), None)
            if key is None:
                raise
            fillable.remove(key)
            extra.append(f"{key}={PLACEHOLDER}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nemo-resrl plan",
        description="Per-GPU memory of each phase of the step, the step's FLOPs and an estimated step time "
        "(docs/plan.md). The cluster section describes the machines: cluster.nodes=4 cluster.gpus_per_node=8",
    )
    parser.add_argument("--config-dir")
    parser.add_argument("--config-name", default="config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    from nemo_resrl.config import ConfigError
    from nemo_resrl.plan.fixes import suggest_fixes
    from nemo_resrl.plan.phases import make_plan
    from nemo_resrl.plan.report import format_plan

    overrides = list(args.overrides)
    tp = [o for o in overrides if o.startswith("actor.tensor_parallel=")]
    if tp and not any(o.startswith("rollout.tensor_parallel=") for o in overrides):
        # the colocated engine runs in the actor's ranks: its tensor parallel size follows the actor's
        overrides.append("rollout.tensor_parallel=" + tp[-1].split("=", 1)[1])
    try:
        cfg = load_plan_config(overrides, args.config_dir, args.config_name)
        plan = make_plan(cfg)
    except ConfigError as e:
        print(f"nemo-resrl plan: config error: {e}", file=sys.stderr)
        return 2
    a = cfg.actor
    summary = f"{a.dtype}, layer spec {a.layer_spec}, recompute {a.recompute}, algorithm {cfg.algorithm.name}"
    print(format_plan(plan, summary, suggest_fixes(cfg, plan) if not plan.fits else None))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT
