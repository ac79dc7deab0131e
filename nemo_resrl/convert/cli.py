"""``nemo-resrl convert``: Megatron checkpoints of this project <-> Hugging Face directories.

    nemo-resrl convert to-hf runs/default OUT_DIR [--dtype bf16] [--hf-config DIR] [--max-shard-size 5GB]
    nemo-resrl convert from-hf HF_DIR OUT_DIR [--dtype bf16]

``to-hf`` takes a run dir or a checkpoints dir (the latest complete step), a step dir or an actor dir.
Both stream tensor by tensor (see ``to_hf`` / ``from_hf``). Exit status 2 on bad input, with the reason.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time

from nemo_resrl.models.hf_mapping import ConversionError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '512MiB' -> 512 * 2**20, '1000' -> 1000 (transformers' max_shard_size spelling)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0: {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemo-resrl convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="direction", required=True)
    to = sub.add_parser("to-hf", help="Megatron checkpoint of this project -> HF directory")
    to.add_argument("checkpoint", help="run dir, checkpoints dir, step dir or actor dir")
    to.add_argument("out", help="the HF directory to write")
    to.add_argument("--hf-config", default=None, help="HF dir for config/tokenizer (old checkpoints only)")
    to.add_argument("--max-shard-size", type=parse_size, default="5GB", help="per safetensors file")
    fr = sub.add_parser("from-hf", help="HF directory -> Megatron dist-checkpoint (model only)")
    fr.add_argument("hf_dir")
    fr.add_argument("out")
    for s in (to, fr):
        s.add_argument(
            "--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: the source's"
        )
        s.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.convert.to_hf import convert_to_hf

    t0 = time.perf_counter()
    try:
        if args.direction == "to-hf":
            out = convert_to_hf(
                args.checkpoint,
                args.out,
                dtype=args.dtype,
                hf_config_dir=args.hf_config,
                max_shard_bytes=args.max_shard_size,
                overwrite=args.overwrite,
            )
        else:
            out = convert_from_hf(args.hf_dir, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (ConversionError, FileNotFoundError) as e:
        print(f"nemo-resrl convert: {e}", file=sys.stderr)
        return 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (peak RSS {peak:.2f} GiB)")
    return 0
