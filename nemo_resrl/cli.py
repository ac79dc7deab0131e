"""Command-line entry point ``nemo-resrl`` (train | eval | convert).

The trainer, evaluation and conversion land in later issues; until then every sub-command says so
plainly and exits with status 2 instead of pretending to run.
"""

from __future__ import annotations

import argparse
import sys

NOT_YET = {
    "train": "the trainer (issue 6: trainer, configs, rewards, data, CLI and the embedded CPU default)",
    "eval": "evaluation (issue 8: conversion, Avg@k / pass@k evaluation and plots)",
    "convert": "checkpoint conversion (issue 8)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-resrl", description="ResRL on megatron-core + vLLM")
    parser.add_argument("command", nargs="?", default="train", choices=sorted(NOT_YET))
    args, _ = parser.parse_known_args(argv)
    print(f"nemo-resrl {args.command}: not implemented yet; it arrives with {NOT_YET[args.command]}.")
    print("What works today: the algorithm core, nemo_resrl.algorithms (see README.md).")
    return 2


if __name__ == "__main__":
    sys.exit(main())
