"""``run_training`` on the tiny Qwen3 with the token-parity reward (see ``trainer_probe.py``).

One process:
    python -m tests.training.run_probe --work DIR --run-dir RUN --steps 6 [--kill-after 3] [--ckpt-every 1]
Two ranks, tensor parallel (``--tp 2``) or data parallel (``--tp 1``: the world size gives DP):
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tests.training.run_probe --work DIR --run-dir RUN --steps 4 --tp 2 --record

Every rank prints ``PROBE OK rank=R world=W tp=T dp=D``. ``--record`` makes every rank write
RUN/rank{R}.json: its layout, the history ``run_training`` returned, and per step the prompts it
generated from with their responses and rewards (what the multi-process tests check the split with).
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--ckpt-every", type=int, default=1, help="checkpoint.every")
    ap.add_argument("--tp", type=int, default=1, help="actor and rollout tensor parallel size")
    ap.add_argument("--record", action="store_true", help="write RUN/rank{R}.json (see the docstring)")
    ap.add_argument("--set", action="append", default=[], help="an extra config override (repeatable)")
    ap.add_argument(
        "--slow-save",
        type=float,
        default=0.0,
        help="megatron's forked checkpoint writers sleep this long first (a save to kill the trainer in)",
    )
    args = ap.parse_args()
    if args.slow_save:
        import time

        from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

        write = FileSystemWriterAsync.write_preloaded_data

        def slow_write(*a, **k):  # runs in the forked writer processes
            time.sleep(args.slow_save)
            return write(*a, **k)

        FileSystemWriterAsync.write_preloaded_data = staticmethod(slow_write)
    if args.kill_after >= 0:  # SIGKILL right after the checkpoint of step kill_after (0-based) is saved
        import signal

        from nemo_resrl.runs.checkpoints import CheckpointManager

        assert args.ckpt_every == 1, "--kill-after needs a checkpoint after every step"
        save = CheckpointManager.save

        def save_then_die(self, step, *a, **k):
            path = save(self, step, *a, **k)
            if step == args.kill_after + 1:  # the save after step kill_after (steps count from 0)
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        CheckpointManager.save = save_then_die
    import torch.distributed as dist

    from nemo_resrl.config import load_config
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.engine import RolloutEngine
    from nemo_resrl.training.data_parallel import TorchDataParallel
    from nemo_resrl.training.loop import run_training
    from tests.training.trainer_probe import even_first_token

    model = Path(args.work) / "qwen3"
    cfg = load_config(
        [
            f"actor.hf_path={model}",
            "actor.optim.lr=0.02",
            f"actor.tensor_parallel={args.tp}",
            f"rollout.tensor_parallel={args.tp}",
            "rollout.max_model_len=128",
            "data.max_prompt_tokens=64",  # the probe's prompts are 6 tokens; must leave room in 128
            "rollout.sampling.max_tokens=8",
            "rollout.sampling.n=4",
            "algorithm.resrl.max_rows=64",
            "algorithm.resrl.rank=8",
            f"trainer.steps={args.steps}",
            "trainer.prompts_per_step=4",
            f"checkpoint.every={args.ckpt_every}",
            "checkpoint.keep_last=2",
            "logging.tensorboard=false",
            f"logging.run_dir={args.run_dir}",
            *args.set,
        ]
    )
    engine = RolloutEngine(model, cfg.rollout)
    actor = MegatronActor(
        cfg.actor, temperature=cfg.rollout.sampling.temperature, reference=cfg.algorithm.loss.kl_coef > 0
    )
    g = torch.Generator().manual_seed(0)
    records = [{"prompt_ids": torch.randint(3, 256, (6,), generator=g).tolist()} for _ in range(10)]
    steps: list[dict] = []

    def reward_fn(rollout, local):
        res = even_first_token(rollout, local)
        steps.append(
            {
                "prompts": [r["prompt_ids"] for r in local],
                "prompt_index": rollout.prompt_index.tolist(),
                "responses": rollout.responses,
                "rewards": res.rewards.tolist(),
            }
        )
        return res

    reward = reward_fn if args.record else even_first_token
    history = run_training(cfg, actor, engine, reward, records, dp=TorchDataParallel())
    lay = actor.layout
    if args.record:
        out = {"rank": dist.get_rank(), "layout": vars(lay), "history": history, "steps": steps}
        (Path(args.run_dir) / f"rank{dist.get_rank()}.json").write_text(json.dumps(out))
    if dist.get_world_size() > 1:
        dist.barrier()
    print(f"PROBE OK rank={dist.get_rank()} world={lay.world_size} tp={lay.tp} dp={lay.dp}", flush=True)


if __name__ == "__main__":
    main()
