"""``run_training`` on the tiny Qwen3 with the token-parity reward (see ``trainer_probe.py``).

python -m tests.run_probe --work DIR --run-dir RUN --steps 6 [--kill-after 3]
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--kill-after", type=int, default=-1)
    args = ap.parse_args()
    if args.kill_after >= 0:
        os.environ["NEMO_RESRL_TEST_KILL_AFTER_STEP"] = str(args.kill_after)
    from nemo_resrl.config import load_config
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.engine import RolloutEngine
    from nemo_resrl.run import run_training
    from tests.trainer_probe import even_first_token

    model = Path(args.work) / "qwen3"
    cfg = load_config(
        [
            f"actor.hf_path={model}",
            "actor.optim.lr=0.02",
            "rollout.max_model_len=128",
            "rollout.sampling.max_tokens=8",
            "rollout.sampling.n=4",
            "algorithm.resrl.max_rows=64",
            "algorithm.resrl.rank=8",
            f"trainer.steps={args.steps}",
            "trainer.prompts_per_step=4",
            "checkpoint.every=1",
            "checkpoint.keep_last=2",
            "logging.tensorboard=false",
            f"logging.run_dir={args.run_dir}",
        ]
    )
    engine = RolloutEngine(model, cfg.rollout)
    actor = MegatronActor(cfg.actor)
    g = torch.Generator().manual_seed(0)
    records = [{"prompt_ids": torch.randint(3, 256, (6,), generator=g).tolist()} for _ in range(10)]
    run_training(cfg, actor, engine, even_first_token, records)
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
