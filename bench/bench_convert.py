"""Conversion memory and speed at Qwen3-8B tensor sizes: peak memory must not grow with the model.

    PYTHONPATH=. .venv/bin/python bench/bench_convert.py [--layers 2 8] [--work DIR]

For each layer count, a random bf16 HF checkpoint with Qwen3-8B's shapes (hidden 4096, ffn 12288, 32 query
/ 8 kv heads of 128, vocab 151936, untied: every tensor of an 8B layer, embedding and lm_head at full size)
is written, converted HF -> Megatron dist-checkpoint (``from-hf``) and back (``to-hf``), each conversion in
a fresh process, and the result is spot-checked against the source. Reported per conversion: wall time,
throughput, and the peak of the process's anonymous memory (RssAnon: what has to fit in RAM) and of its
RSS (also counts pages of mmapped safetensors files, which the kernel can drop under pressure), sampled
every 20 ms. Qwen3-8B has 36 layers; if the peaks are flat from 2 to 8 layers, 36 fit in the same memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}


def make_hf(out: Path, layers: int) -> int:
    """A random bf16 Qwen3-8B-shaped HF dir with ``layers`` layers, written tensor by tensor."""
    from nemo_resrl.convert.safetensors_stream import TensorEntry, write_sharded
    from nemo_resrl.models.hf_mapping import ModelShape, hf_layer_name

    cfg = {**QWEN3_8B, "num_hidden_layers": layers}
    shape = ModelShape.from_hf_config(cfg)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg))

    def rnd(s):
        return lambda: iter([torch.randn(s).mul_(0.02).to(torch.bfloat16)])

    big = (shape.vocab, shape.hidden)
    entries = [TensorEntry("model.embed_tokens.weight", torch.bfloat16, big, rnd(big))]
    for i in range(layers):
        for suffix in shape.layer_suffixes():
            for name, s in shape.hf_layer_shapes(suffix):
                entries.append(TensorEntry(hf_layer_name(i, name), torch.bfloat16, s, rnd(s)))
    entries.append(TensorEntry("model.norm.weight", torch.bfloat16, (shape.hidden,), rnd((shape.hidden,))))
    entries.append(TensorEntry("lm_head.weight", torch.bfloat16, big, rnd(big)))
    write_sharded(out, entries, 5 * 10**9)
    return sum(e.nbytes for e in entries)


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(direction: str, src: str, dst: str) -> None:
    """Run one conversion in this (fresh) process while sampling its memory."""
    peaks = {"RssAnon": 0, "VmRSS": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for f in peaks:
                peaks[f] = max(peaks[f], _status_kib(f))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    from nemo_resrl.convert.from_hf import convert_from_hf
    from nemo_resrl.convert.to_hf import convert_to_hf

    base = {f: _status_kib(f) for f in peaks}
    t0 = time.perf_counter()
    if direction == "from-hf":
        convert_from_hf(src, dst)
    else:
        convert_to_hf(src, dst)
    wall = time.perf_counter() - t0
    done.set()
    for f in peaks:
        peaks[f] = max(peaks[f], _status_kib(f))
    print(json.dumps({"wall_s": wall, "peak_kib": peaks, "baseline_kib": base}))


def spot_check(src: Path, back: Path) -> None:
    from safetensors import safe_open

    names = [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
    ]

    def where(d: Path) -> dict[str, str]:
        index = d / "model.safetensors.index.json"
        if index.is_file():
            return json.loads(index.read_text())["weight_map"]
        return dict.fromkeys(names, "model.safetensors")

    idx_src, idx_back = where(src), where(back)
    for n in names:
        with safe_open(src / idx_src[n], "pt") as a, safe_open(back / idx_back[n], "pt") as b:
            assert torch.equal(a.get_tensor(n), b.get_tensor(n)), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", nargs=3, default=None)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_convert_"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; work dir {work}")
    print("| layers | model GiB | direction | wall s | GiB/s | peak RssAnon GiB | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for layers in args.layers:
        d = work / f"L{layers}"
        shutil.rmtree(d, ignore_errors=True)
        nbytes = make_hf(d / "hf", layers)
        for direction, src, dst in (("from-hf", d / "hf", d / "mg"), ("to-hf", d / "mg", d / "back")):
            cmd = [sys.executable, __file__, "--child", direction, str(src), str(dst)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            gib = nbytes / 2**30
            anon, rss = (r["peak_kib"][k] / 2**20 for k in ("RssAnon", "VmRSS"))
            row = [layers, f"{gib:.2f}", direction, f"{r['wall_s']:.1f}", f"{gib / r['wall_s']:.2f}"]
            print("| " + " | ".join(map(str, [*row, f"{anon:.2f}", f"{rss:.2f}"])) + " |", flush=True)
        spot_check(d / "hf", d / "back")
        shutil.rmtree(d)
    print("spot checks (embedding, a k_proj, an up_proj) equal after the round trip")


if __name__ == "__main__":
    main()
