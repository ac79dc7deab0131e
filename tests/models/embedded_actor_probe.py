"""The Megatron actor on the converted SmolLM2-135M-Instruct vs transformers (real weights, rope 1e5).

python -m tests.models.embedded_actor_probe DIR     -> prints "RESULT {json}"
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_resrl.config.actor import ActorConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences

    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3? Answer briefly."}], add_generation_prompt=True
    )
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    t = torch.tensor(ids + tok.encode("2 + 3 = 5"))
    actor = MegatronActor(ActorConfig(hf_path=path))
    logits = gather_logits(actor, Sequences([t], [len(ids)]))[0]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(t[None]).logits[0]
    out = actor.forward_logprobs(Sequences([t], [len(ids)]))
    ref_lp = torch.log_softmax(ref, -1)[len(ids) - 1 : -1].gather(-1, t[len(ids) :, None]).squeeze(-1)
    res = {
        "logit_diff": float((logits - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "logp_diff": float((out.logprobs[0, : ref_lp.numel()] - ref_lp).abs().max()),
        "exported_equal": all(
            torch.equal(v, hf.state_dict()[k])
            for k, v in actor.export_weights(cpu=True)
            if k in hf.state_dict()
        ),
    }
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
