"""The tiny Qwen3 actor on one CUDA GPU (NCCL world of one): logits and log-probs against transformers on
the same GPU, and one optimizer step. Run by ``test_gpu.py`` (marked ``gpu``).

    python -m tests.models.gpu_probe MODEL_DIR
"""

from __future__ import annotations

import json
import math
import sys
import warnings

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken
from tests.models.logits import gather_logits

warnings.filterwarnings("ignore")


def main() -> None:
    from transformers import AutoModelForCausalLM

    from nemo_resrl.config import ActorConfig, OptimConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences

    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    torch.backends.cudnn.allow_tf32 = False
    path = sys.argv[1]
    actor = MegatronActor(
        ActorConfig(hf_path=path, micro_batch_size=2, optim=OptimConfig(lr=1e-3)).validate()
    )
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(3, 200, (n,), generator=g) for n in (9, 12, 7)]
    seqs = Sequences(toks, [4, 5, 3])
    logits = gather_logits(actor, seqs)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = [hf(t[None].cuda()).logits[0].cpu() for t in toks]
    out = actor.forward_logprobs(seqs)
    ref_lp = torch.zeros_like(out.logprobs)
    for i, (t, p) in enumerate(zip(toks, seqs.prompt_lens)):
        lp = torch.log_softmax(ref[i], -1)[p - 1 : -1].gather(-1, t[p:, None]).squeeze(-1)
        ref_lp[i, : lp.numel()] = lp
    adv = torch.randn(out.logprobs.shape, generator=g) * out.mask
    m = actor.train_step(seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss())
    after = actor.forward_logprobs(seqs)
    res = {
        "device": str(actor.device),
        "layer_spec": actor.model.spec,
        "logit_diff": max(float((a - b).abs().max()) for a, b in zip(logits, ref)),
        "logp_diff": float(((out.logprobs - ref_lp) * out.mask).abs().max()),
        "step_finite": all(math.isfinite(v) for v in m.values()),
        "step_changed_logp": float(((after.logprobs - out.logprobs) * out.mask).abs().max()),
    }
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
