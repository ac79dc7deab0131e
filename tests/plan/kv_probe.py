"""vLLM's own KV-cache bytes per token for a model directory: its ``ModelConfig`` gives the KV heads per
tensor rank, the head size and the layers; its full-attention ``KVCacheSpec`` gives the bytes of one block
(``page_size_bytes``), divided by the block size.

    python -m tests.plan.kv_probe --out FILE DIR [DIR ...]

``FILE`` gets {"DIR dtype tp=N": bytes per token} for bf16 and fp32 at tensor parallel 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

BLOCK = 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()

    import torch
    from vllm.config import ModelConfig, ParallelConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    out = {}
    for d in args.dirs:
        for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            mc = ModelConfig(model=d, dtype=torch_dtype)
            for tp in (1, 2):
                pc = ParallelConfig(tensor_parallel_size=tp)
                spec = FullAttentionSpec(
                    block_size=BLOCK,
                    num_kv_heads=mc.get_num_kv_heads(pc),
                    head_size=mc.get_head_size(),
                    dtype=mc.dtype,
                )
                out[f"{d} {dtype} tp={tp}"] = spec.page_size_bytes // BLOCK * mc.get_num_layers(pc)
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
