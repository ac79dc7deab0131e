"""``nemo-resrl eval [OVERRIDE ...]``: see ``runner.py``; overrides are dotlist (``key=value``) on
``nemo_resrl/conf/eval.yaml``. Exit status 0, or 2 with the reason for a bad config, benchmark file or
model path."""

from __future__ import annotations

import sys

from nemo_resrl.common.logs import setup_logging


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("example: nemo-resrl eval model=runs/default benchmarks=[data/math500.jsonl] sampling.n=16")
        return 0
    from nemo_resrl.config import ConfigError, load_eval_config
    from nemo_resrl.convert import ConversionError
    from nemo_resrl.evaluation.benchmarks import BenchmarkError

    try:
        cfg = load_eval_config(argv)
    except ConfigError as e:
        print(f"nemo-resrl eval: config error: {e}", file=sys.stderr)
        return 2
    setup_logging()
    from nemo_resrl.evaluation.runner import format_table, run_eval

    try:
        report = run_eval(cfg)
    except (ConfigError, BenchmarkError, ConversionError) as e:
        print(f"nemo-resrl eval: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {cfg.output_dir}/eval.json, samples.jsonl, pass_at_k.png")
    return 0
