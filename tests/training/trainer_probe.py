"""A few RL steps on the tiny Qwen3 with a real verifiable reward on token ids, in one process.

    python -m tests.training.trainer_probe --work DIR --algorithm resrl --steps 6

The reward is a task the tiny random model can learn within a few steps: "start the response with an
even token id". Writes DIR/<algorithm>.json with the per-step metrics.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


@dataclass
class ParityResult:
    rewards: torch.Tensor
    correct: torch.Tensor
    counts: Counter = field(default_factory=Counter)

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        return {f"{prefix}count/{k}": float(v) for k, v in self.counts.items()}


def even_first_token(rollout, records) -> ParityResult:
    ok = torch.tensor([len(r) > 0 and r[0] % 2 == 0 for r in rollout.responses])
    return ParityResult(rewards=ok.float(), correct=ok, counts=Counter(ok=len(ok)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--algorithm", default="resrl")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    work = Path(args.work)
    from nemo_resrl.config import (
        ActorConfig,
        AlgorithmConfig,
        DynamicSamplingConfig,
        OptimConfig,
        OverlongConfig,
        ResRLConfig,
        RolloutConfig,
        SamplingConfig,
        TrainerConfig,
    )
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.engine import RolloutEngine
    from nemo_resrl.training.data_parallel import TorchDataParallel
    from nemo_resrl.training.phases import Phases
    from nemo_resrl.training.step_metrics import StepMetrics, reduce_over_ranks
    from nemo_resrl.training.trainer import Trainer

    model = work / "qwen3"
    rollout = RolloutConfig(
        sampling=SamplingConfig(n=8, max_tokens=8, seed=0), dtype="fp32", max_model_len=128
    )
    engine = RolloutEngine(model, rollout)
    actor = MegatronActor(
        ActorConfig(hf_path=str(model), micro_batch_size=8, optim=OptimConfig(lr=2e-2, weight_decay=0.0)),
        temperature=rollout.sampling.temperature,
    )
    algo = AlgorithmConfig.preset(args.algorithm, resrl=ResRLConfig(max_rows=64, rank=8))
    if args.algorithm == "dapo":  # dynamic sampling + overlong shaping (max_tokens 8, last 2 tokens)
        algo.dynamic_sampling = DynamicSamplingConfig(enabled=True, max_rounds=3)
        algo.overlong = OverlongConfig(enabled=True, buffer=2, factor=1.0)

    def prompts(seed: int) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        return [{"prompt_ids": torch.randint(3, 256, (6,), generator=g).tolist()} for _ in range(8)]

    trainer = Trainer(
        actor,
        engine,
        even_first_token,
        algorithm=algo,
        trainer=TrainerConfig(prompts_per_step=8, mini_batches=2),
        rollout=rollout,
        dp=TorchDataParallel(),
        refill=lambda step, round_: prompts(1000 * step + round_),
    )
    records = prompts(0)
    if args.algorithm == "dapo":  # what dynamic sampling keeps for one step, before any training
        m = StepMetrics()
        batch = trainer._rollout(records, Phases(), m)
        groups = {}
        for gid, r in zip(batch.group_ids.tolist(), batch.rewards.tolist()):
            groups.setdefault(gid, []).append(r)
        kept = {
            "groups": list(groups.values()),
            "metrics": reduce_over_ranks([m]),
            "responses": len(batch.rollout),
        }
        (work / "dapo_kept.json").write_text(json.dumps(kept))
    history = [trainer.train_step(records) for _ in range(args.steps)]
    (work / f"{args.algorithm}.json").write_text(json.dumps(history, indent=1))
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
