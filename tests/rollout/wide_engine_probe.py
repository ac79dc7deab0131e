"""A vLLM engine wider than the actor: rollout TP=2 over two data-parallel replicas of a TP=1 actor, in
the same torchrun ranks (``RolloutEngine(..., replica_width=1)``).

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m tests.rollout.wide_engine_probe --work DIR

Each rank passes its own prompts (rank 0 three, rank 1 two, with their global first indices); the engine
generates all five together and gives each rank its own. Writes DIR/wide_rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken
from tests.rollout.rollout_probe import greedy_agreement

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    work = Path(ap.parse_args().work)
    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.batch import token_mult_prob_error
    from nemo_resrl.rollout.engine import RolloutEngine

    model = work / "qwen3"
    actor = MegatronActor(
        ActorConfig(hf_path=str(model), micro_batch_size=4, optim=OptimConfig(lr=2e-2, weight_decay=0.0))
    )
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(0)
    every = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 4)]
    mine, first = (every[:3], 0) if rank == 0 else (every[3:], 3)
    sampling = SamplingConfig(n=2, max_tokens=12, seed=7)
    cfg = RolloutConfig(sampling=sampling, dtype="fp32", max_model_len=256, tensor_parallel=2)
    engine = RolloutEngine(model, cfg, replica_width=1)
    res = {"rank": rank, "actor_dp": actor.layout.dp}
    batch = engine.generate(mine, first_index=first)
    res["own_prompts"] = (
        batch.prompts == mine and batch.prompt_index.tolist() == [0, 0, 1, 1, 2, 2][: 2 * len(mine)]
    )
    res["responses"] = batch.responses
    res["repeat_equal"] = engine.generate(mine, first_index=first).responses == batch.responses
    out = actor.forward_logprobs(batch.to_sequences())
    res["token_mult_prob_error"] = token_mult_prob_error(batch.response_logprobs(), out.logprobs, out.mask)
    adv = torch.randn(out.logprobs.shape, generator=torch.Generator().manual_seed(rank))
    for _ in range(2):  # each replica trains on its own responses; the update is shared (DP=2)
        actor.train_step(batch.to_sequences(), PerToken(out.logprobs, adv, out.mask), PolicyLoss())
    engine.refit(actor.export_weights(cpu=True))
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=10, stop_on_eos=False)
    after = engine.generate(mine, greedy, first_index=first)
    res["after_refit_logp_diff"], res["after_refit_argmax_gap"] = greedy_agreement(actor, mine, after)
    try:  # the ranks of one engine must agree on the sampling settings
        engine.generate(mine, greedy if rank == 0 else sampling, first_index=first)
        res["mixed_sampling_refused"] = False
    except ValueError as e:
        res["mixed_sampling_refused"] = "different sampling settings" in str(e)
    (work / f"wide_rank{rank}.json").write_text(json.dumps(res))
    dist.barrier()
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
