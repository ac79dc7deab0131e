"""Tiny Qwen3 actors from the same checkpoint: one with every ``actor.offload`` switch on goes through the
colocated lifecycle between its steps and must free the storage while offloaded and stay bit-identical
to one that never offloads; one that pads its micro-batches to a multiple of 16 tokens (as FP8 needs)
must give the same log-probs and loss. Writes a JSON line after ``RESULT``.

    python -m tests.models.offload_probe MODEL_DIR
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken

warnings.filterwarnings("ignore")


def main() -> None:
    from nemo_resrl.config import ActorConfig, OffloadConfig, OptimConfig, PolicyLossConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences

    path = sys.argv[1]

    def build(offload: bool, pad: int | None = None) -> MegatronActor:
        cfg = ActorConfig(
            hf_path=path,
            micro_batch_size=2,
            pad_to_multiple=pad,
            optim=OptimConfig(lr=1e-2, weight_decay=0.0),
            offload=OffloadConfig(optimizer=offload, grads=offload, params=offload),
        )
        return MegatronActor(cfg.validate())

    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(3, 200, (n,), generator=g) for n in (9, 12, 7, 10)]
    seqs = Sequences(toks, [4, 5, 3, 4])
    ref, off, padded = build(False), build(True), build(False, pad=16)
    loss = PolicyLossConfig()
    res: dict = {}
    # padding: same log-probs, same loss, before and after one step
    adv = torch.randn(4, 8, generator=torch.Generator().manual_seed(9))
    a, b = ref.forward_logprobs(seqs), padded.forward_logprobs(seqs)
    res["pad_seq_len"] = padded.forward.layout(seqs).seq_len
    res["pad_logp_diff"] = float(((a.logprobs - b.logprobs) * a.mask).abs().max())
    ma = ref.train_step(
        seqs, PerToken(a.logprobs, adv[:, : a.mask.shape[1]] * a.mask, a.mask), PolicyLoss(loss)
    )
    mb = padded.train_step(
        seqs, PerToken(b.logprobs, adv[:, : b.mask.shape[1]] * b.mask, b.mask), PolicyLoss(loss)
    )
    res["pad_loss_diff"] = abs(ma["loss"] - mb["loss"])
    after = ref.forward_logprobs(seqs).logprobs - padded.forward_logprobs(seqs).logprobs
    res["pad_logp_diff_after_step"] = float((after * a.mask).abs().max())
    del padded
    ref = build(False)  # a fresh reference for the offload comparison

    def step(actor, adv_seed: int) -> None:
        out = actor.forward_logprobs(seqs)
        adv = torch.randn(out.logprobs.shape, generator=torch.Generator().manual_seed(adv_seed)) * out.mask
        actor.train_step(seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss(loss))

    for s in range(3):
        step(ref, s)
        off.prepare_for_logprobs()
        off.prepare_for_training()
        step(off, s)
        mem = off.memory
        off.prepare_for_refit()
        res.setdefault("optimizer_bytes", mem._optim.nbytes)
        res.setdefault("grad_bytes", mem.grads.nbytes)
        res.setdefault("param_bytes", mem.params.nbytes)
        res[f"step{s}_optimizer_resident"] = mem._optim.resident_bytes()
        res[f"step{s}_grads_resident"] = mem.grads.resident_bytes()
        weights = {k: v.clone() for k, v in off.export_weights()}  # the refit's stream
        off.finish_refit()
        res[f"step{s}_params_resident"] = mem.params.resident_bytes()
        ref_w = {k: v.clone() for k, v in ref.export_weights()}
        res[f"step{s}_equal"] = all(torch.equal(weights[k], ref_w[k]) for k in ref_w)
    off.save_checkpoint(sys.argv[2])  # everything offloaded is brought back before a save
    res["saved_while_offloaded"] = True
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
