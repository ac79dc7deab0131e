"""vLLM colocated with a tensor-parallel Megatron actor in the same torchrun ranks (external_launcher).

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tests.rollout.colocated_probe --work DIR

Both rank 0 and rank 1 hold half of each model (TP=2 for the actor and for vLLM). Writes
DIR/colocated.json from rank 0.
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
from tests.rollout.rollout_probe import actor_greedy, greedy_agreement

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
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (5, 9, 3)]
    engine = RolloutEngine(
        model,
        RolloutConfig(
            sampling=SamplingConfig(n=2, max_tokens=12), dtype="fp32", max_model_len=256, tensor_parallel=2
        ),
    )
    actor = MegatronActor(
        ActorConfig(
            hf_path=str(model),
            tensor_parallel=2,
            micro_batch_size=4,
            optim=OptimConfig(lr=2e-2, weight_decay=0.0),
        )
    )
    res = {"world": dist.get_world_size()}
    batch = engine.generate(prompts)
    out = actor.forward_logprobs(batch.to_sequences())
    res["token_mult_prob_error"] = token_mult_prob_error(batch.response_logprobs(), out.logprobs, out.mask)
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=10, stop_on_eos=False)
    g0 = engine.generate(prompts, greedy).responses
    res["greedy_equal_before"] = g0 == actor_greedy(actor, prompts, 10)
    adv = torch.randn(out.logprobs.shape, generator=g)
    for _ in range(3):
        actor.train_step(batch.to_sequences(), PerToken(out.logprobs, adv, out.mask), PolicyLoss())
    engine.refit(actor.export_weights(cpu=True))
    out1 = engine.generate(prompts, greedy)
    g1 = out1.responses
    res["greedy_changed"] = g1 != g0
    res["after_refit_logp_diff"], res["after_refit_argmax_gap"] = greedy_agreement(actor, prompts, out1)
    same = [None] * dist.get_world_size()
    dist.all_gather_object(same, g1)
    res["ranks_agree"] = all(s == same[0] for s in same)
    if dist.get_rank() == 0:
        (work / "colocated.json").write_text(json.dumps(res, indent=1))
    dist.barrier()
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
