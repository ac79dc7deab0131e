"""Measures what the ResRL pass allocates on each rank of the stage owning layer L-2, next to the sizes the
planner's ResRL term takes (``nemo_resrl.plan.resrl.pass_bytes``).

    python -m torch.distributed.run --standalone --nproc_per_node N \
        -m tests.plan.resrl_memory_probe --work DIR --tp T [--dtype bf16]

DIR holds the tiny Qwen3 checkpoint ``qwen3/``. The batch: groups of 4-6 responses of 5-40 tokens, mixed,
all-correct, all-wrong and few-token groups, spread over the data-parallel ranks (rank r takes responses
r, r + dp, ...). The pass's device work (its layer L-2 consumer, the fit it triggers, the gating) runs
under ``LiveBytes``; ``DIR/resrl_memory_<layout>_<rank>.json`` gets the peak, the pass's sizes and dims.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")
VOCAB = 256
# (correct, responses) per group
GROUPS = [(2, 5), (1, 4), (3, 6), (4, 4), (0, 5), (1, 4), (2, 6), (3, 5), (1, 6)]
# ResRL settings that make each part of the pass the peak: the fit batches, the residual chunks, the gating
# (the first three in the two-phase layout, the last two in the deferred one)
FIT = dict(
    max_rows=48, rank=6, svd_oversample=4, svd_iterations=2, fit_batch_groups=2, residual_chunk_tokens=16
)
RESIDUALS = dict(max_rows=6, rank=2, svd_oversample=2, svd_iterations=1, residual_chunk_tokens=256)
CASES = {
    "fit": dict(FIT, deferred_rows_mib=0),
    "residuals": dict(RESIDUALS, deferred_rows_mib=0),
    "gating": dict(
        max_rows=6, rank=2, svd_oversample=2, svd_iterations=1, residual_chunk_tokens=1, deferred_rows_mib=0
    ),
    "deferred_fit": FIT,
    "deferred_residuals": RESIDUALS,
}


def batch():
    from nemo_resrl.algorithms.advantages import compute_advantages
    from nemo_resrl.models.batch import Sequences

    g = torch.Generator().manual_seed(5)
    toks, prompts, gids, correct = [], [], [], []
    for gid, (n_ok, n) in enumerate(GROUPS):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)
        for j in range(n):
            resp = 3 if gid == 5 and j == 0 else int(torch.randint(5, 41, (1,), generator=g))
            toks.append(torch.cat([prompt, torch.randint(3, VOCAB, (resp,), generator=g)]))
            prompts.append(prompt.numel())
            gids.append(gid)
            correct.append(j < n_ok)
    gids_t, ok = torch.tensor(gids), torch.tensor(correct)
    return Sequences(toks, prompts), gids_t, compute_advantages("grpo", ok.float(), ok, gids_t), ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()

    from nemo_resrl.algorithms.resrl import ResponseMeta
    from nemo_resrl.config import ActorConfig, ResRLConfig
    from nemo_resrl.diagnostics.live_bytes import LiveBytes
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences
    from nemo_resrl.models.resrl_pass import ResRLPass

    class Traced(LiveBytes):
        """With NEMO_RESRL_DEBUG_PEAK set: where the peak was reached (for a failing comparison)."""

        def _track(self, t, inputs):
            old = self.peak
            super()._track(t, inputs)
            if self.peak > old and os.environ.get("NEMO_RESRL_DEBUG_PEAK"):
                self.where = [f"{f.name}:{f.lineno}" for f in traceback.extract_stack()[-9:-3]]
                self.sizes = sorted((e[1] for e in self._entries.values()), reverse=True)[:16]

    actor = MegatronActor(
        ActorConfig(
            hf_path=str(args.work / "qwen3"), tensor_parallel=args.tp, micro_batch_size=3, dtype=args.dtype
        )
    )
    lay = actor.layout
    seqs, gids, adv, ok = batch()
    idx = list(range(lay.dp_rank, len(seqs), lay.dp))
    local = Sequences([seqs.tokens[i] for i in idx], [seqs.prompt_lens[i] for i in idx])
    meta = ResponseMeta(
        group_ids=gids[idx], response_ids=torch.tensor(idx), advantages=adv[idx], positive=ok[idx]
    )
    out = {}
    for case, settings in CASES.items():
        cfg = ResRLConfig(**settings, positive_set="correct")
        lb = Traced()

        class Measured(ResRLPass):
            def consume(self, chunk, lb=lb):
                with lb:
                    super().consume(chunk)

            def _finish(self, lb=lb):
                with lb:
                    return super()._finish()

            def _fit_deferred(self, lb=lb):
                with lb:
                    super()._fit_deferred()

        p = Measured(actor, local, meta, cfg, step=1)
        res = p.run()
        out[case] = {
            "peak": lb.peak,
            "computes": p.computes,
            "sizes": dataclasses.asdict(p.sizes),
            "dims": dict(
                d=actor.hidden_size,
                rank=cfg.rank,
                oversample=cfg.svd_oversample,
                iterations=cfg.svd_iterations,
                fit_batch_groups=cfg.fit_batch_groups,
                residual_chunk_tokens=cfg.residual_chunk_tokens,
                act_bytes=2 if args.dtype == "bf16" else 4,
                dp=lay.dp,
                batch=len(local),
                width=max(local.response_lens),
                active_groups=res.stats.num_active,
            ),
            "where": getattr(lb, "where", None),
            "top": getattr(lb, "sizes", None),
            "weighted": bool((res.weights < 1).any()),
        }
    name = f"tp{lay.tp}dp{lay.dp}_{args.dtype}"
    (args.work / f"resrl_memory_{name}_{dist.get_rank()}.json").write_text(json.dumps(out))
    dist.barrier()
    print(f"PROBE OK {name}", flush=True)


if __name__ == "__main__":
    main()
