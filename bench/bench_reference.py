"""What a KL penalty's reference policy costs on the CPU default: time and peak memory of the training run
with and without ``algorithm.loss.kl_coef``.

    PYTHONPATH=. .venv/bin/python bench/bench_reference.py [--steps 3] [--work /tmp/bench_reference]

Each configuration runs ``nemo-resrl train`` (the embedded SmolLM2-135M CPU default, ``--steps`` steps, no
checkpoints, no evaluation) in its own process, which reports its own peak resident memory (ru_maxrss).
Printed per configuration: the mean per-step time of the old-log-prob phase (where the reference pass
runs, right after the old-log-prob pass), the mean step time, the peak RSS, and the size of the host copy
of the reference weights (the checkpoint's parameters at the actor's dtype).
Step 0 is left out of the means (warm-up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys
from nemo_resrl.cli import main
rc = main(["train", *sys.argv[1:]])
print("BENCH " + json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run(work: Path, name: str, steps: int, extra: list[str]) -> dict:
    run_dir = work / name
    args = [
        f"trainer.steps={steps}",
        "trainer.eval_every=0",
        "checkpoint.every=0",
        "checkpoint.resume=false",
        "checkpoint.start_over=true",
        "logging.tensorboard=false",
        f"logging.run_dir={run_dir}",
        *extra,
    ]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH ")]
    if not line or json.loads(line[-1][6:])["rc"] != 0:
        raise SystemExit(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    step_keys = [k for k in rows[0] if k.startswith("time/") and k.endswith("_s")]
    return {
        "old_logprobs_s": mean("time/old_logprobs_s"),
        "step_s": sum(mean(k) for k in step_keys),
        "maxrss_gib": json.loads(line[-1][6:])["maxrss_kib"] / 2**20,
        "kl": mean("train/kl") if "train/kl" in rows[0] else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/bench_reference")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from nemo_resrl.config import load_config
    from nemo_resrl.models.embedded import ensure_embedded_model

    cfg = load_config()
    path = ensure_embedded_model(dtype="float32")
    params = sum(t.numel() for t in _weights(path))
    dtype_bytes = 2 if cfg.actor.dtype in ("bf16", "fp16") else 4
    print(f"reference host copy: {params * dtype_bytes / 2**20:.1f} MiB")
    for name, extra in (("no_kl", []), ("kl", ["algorithm.loss.kl_coef=0.05"])):
        r = run(work, name, args.steps, extra)
        kl = "" if r["kl"] is None else f"  train/kl {r['kl']:.2e}"
        print(
            f"{name:6s} old-log-probs {r['old_logprobs_s']:6.2f} s/step  step {r['step_s']:6.2f} s  "
            f"peak RSS {r['maxrss_gib']:.2f} GiB{kl}",
            flush=True,
        )


def _weights(path: Path):
    from safetensors import safe_open

    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                yield st.get_tensor(k)


if __name__ == "__main__":
    main()
