"""The whole RL step on one device without vLLM or TransformerEngine: a few real ResRL steps of
``nemo-resrl train`` with ``rollout.engine=transformers``, each phase's time and allocator peak beside
``nemo-resrl plan``'s numbers for the same configuration (``tools/gpu_check.sh``'s ``loop`` check).

The run is the production path in a child process (a clean device): the embedded task's prompts
(reasoning-gym basic arithmetic) and grader, the colocated memory lifecycle (the engine asleep in the
log-prob and training phases, refit by streaming the actor's weights into it), the ResRL pass, a
checkpoint at the last step. The model is Qwen3-shaped with random weights (no checkpoint can be carried
to a lent GPU) and the embedded model's tokenizer, biased so that it answers with digits and spaces:
every token's embedding shares one direction (``BIAS_NORM``), the layers' output projections are scaled
down (``LAYER_SCALE``) so that this direction dominates the last hidden state, and the output layer maps it
to the digits, the space and end-of-turn. Its answers are then numbers, right often enough that ResRL's
groups hold correct and incorrect responses (``resrl/groups_active`` is reported). All of the model's
FLOPs and memory are those of the shape.

reasoning-gym imports every task's dependencies when it is imported, among them ``pycosat`` (a compiled SAT
solver, published without wheels for every Python) and ``matplotlib`` (cellpylib's plots; too large to carry
to a lent GPU); the arithmetic task calls neither. Where one is not installed the child process gets a
stand-in whose every attribute raises when used (``SHIMS``; ``res["shims"]`` names those given).

On a GPU: the Qwen3-1.7B shape in bf16, ``LOOP_GPU``; the run's ``memory/<phase>_peak_gib`` against the
plan's phase totals without its CUDA-context term (the allocator does not see that). On CPU (``--cpu``,
CI): a tiny shape in fp32, ``LOOP_CPU``; times only.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from nemo_resrl.common import die_with_parent

GIB = 2**30
BIAS_NORM = 10.0  # the shared embedding direction's norm
LAYER_SCALE = 0.01  # o_proj and down_proj weights scaled by this
LOGITS = {"space": 17.0, "digit": 14.0, "eos": 13.5}  # what the shared direction adds to these logits
QWEN3_1P7B = dict(layers=28, hidden=2048, ffn=6144, heads=16, kv=8, head_dim=128)
TINY = dict(layers=4, hidden=256, ffn=512, heads=4, kv=2, head_dim=64)
# the run: shape, dtype and batch per device
LOOP_GPU = dict(
    shape=QWEN3_1P7B,
    overrides=[
        "actor.dtype=bf16",
        "rollout.dtype=bf16",
        "actor.micro_batch_size=4",
        "trainer.steps=3",
        "trainer.prompts_per_step=16",
        "rollout.sampling.n=8",
        "rollout.sampling.max_tokens=512",
        "rollout.max_model_len=1024",
        "data.max_prompt_tokens=256",
        "data.size=64",
    ],
)
LOOP_CPU = dict(
    shape=TINY,
    overrides=[
        "trainer.steps=2",
        "trainer.prompts_per_step=4",
        "rollout.sampling.n=4",
        "rollout.sampling.max_tokens=16",
        "data.size=8",
    ],
)
SHIM_MODULE = (
    '"""Stands in for {name}, which is not installed (nemo_resrl.diagnostics.loop_check):\n'
    'importing it works, using anything from it raises ModuleNotFoundError."""\n\n\n'
    "def __getattr__(attr):\n"
    "    if attr.startswith('__'):\n"
    "        raise AttributeError(attr)\n\n"
    "    def _missing(*args, **kwargs):\n"
    "        msg = '{name} is not installed (' + attr + ' was called)'\n"
    "        raise ModuleNotFoundError(msg, name='{name}')\n\n"
    "    return _missing\n"
)
# top-level module -> the module files of its stand-in (what reasoning-gym's import touches)
SHIMS = {
    "pycosat": ["pycosat.py"],
    "matplotlib": [
        "matplotlib/__init__.py",
        "matplotlib/pyplot.py",
        "matplotlib/animation.py",
        "matplotlib/collections.py",
    ],
    "mpl_toolkits": ["mpl_toolkits/__init__.py", "mpl_toolkits/mplot3d/__init__.py"],
}
PHASES = {"generate": "generation", "old_logprobs": "old log-probs", "train": "training", "refit": "refit"}


def tokenizer_dir() -> Path:
    """The embedded model's tokenizer: ``NEMO_RESRL_TOKENIZER`` (a directory holding its files, what a lent
    GPU gets: ``tools/gpu_wheels.sh`` writes ``.gpu_tokenizer``), else the embedded model itself."""
    env = os.environ.get("NEMO_RESRL_TOKENIZER")
    if env:
        return Path(env)
    from nemo_resrl.models.embedded import ensure_embedded_model

    return Path(ensure_embedded_model(dtype="float32"))


def digit_answering_qwen3(path: Path, shape: dict, tokenizer: Path, device: str, seed: int = 0) -> Path:
    """A random Qwen3 of ``shape`` with ``tokenizer``'s vocabulary that answers with numbers (module
    docstring), saved with the tokenizer files as an HF directory; built on ``device`` (fast on a GPU)."""
    import shutil

    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        head_dim=shape["head_dim"],
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        eos_token_id=eos,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    g = torch.Generator(device="cpu").manual_seed(seed)
    d = shape["hidden"]
    v = torch.randn(d, generator=g)
    v = (v / v.norm()).to(device)
    favored = {"space": [_token(tok, " ")], "digit": [_token(tok, c) for c in "0123456789"], "eos": [eos]}
    with torch.no_grad():
        model.model.embed_tokens.weight += BIAS_NORM * v
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight *= LAYER_SCALE
            layer.mlp.down_proj.weight *= LAYER_SCALE
        # after the final norm the hidden state is about sqrt(d) v: these rows' logits rise by LOGITS
        for kind, ids in favored.items():
            model.lm_head.weight[ids] += LOGITS[kind] * v / math.sqrt(d)
    if device == "cuda":  # what the GPU run loads (actor.dtype=bf16): half the bytes to write and read
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    for f in tokenizer.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, path / f.name)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


def _token(tok, text: str) -> int:
    """The id of the one token ``text`` encodes to (as it reads inside a sentence)."""
    ids = tok.encode("a" + text, add_special_tokens=False)[1:] or tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer encodes {text!r} as {len(ids)} tokens, not one")
    return ids[0]


def loop_overrides(device: str, model: Path, run_dir: Path) -> list[str]:
    """The run's config overrides (also what the plan is made for)."""
    spec = LOOP_GPU if device == "cuda" else LOOP_CPU
    steps = next(int(o.split("=")[1]) for o in spec["overrides"] if o.startswith("trainer.steps="))
    out = [
        f"actor.hf_path={model}",
        "rollout.engine=transformers",
        "rollout.tensor_parallel=1",
        "trainer.eval_every=0",
        f"checkpoint.every={steps}",
        "checkpoint.resume=false",
        "logging.tensorboard=false",
        f"logging.run_dir={run_dir}",
        *spec["overrides"],
    ]
    if device == "cuda":
        gib = torch.cuda.get_device_properties(0).total_memory / GIB
        out += ["cluster.nodes=1", "cluster.gpus_per_node=1", f"cluster.gpu_memory_gib={gib:.1f}"]
    return out


def write_shims(directory: Path, every: bool = False) -> list[str]:
    """Writes the stand-ins (``SHIMS``) of the modules this interpreter cannot import (``every``: all of them)
    into ``directory``; returns their names (empty: nothing written)."""
    given = []
    for name, files in SHIMS.items():
        if not every and importlib.util.find_spec(name) is not None:
            continue
        for rel in files:
            path = directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(SHIM_MODULE.format(name=name))
        given.append(name)
    return given


def planned_phases(overrides: list[str]) -> dict[str, float]:
    """The plan's per-phase totals in GiB without its CUDA-context term, for the run's configuration."""
    from nemo_resrl.plan.cli import load_plan_config
    from nemo_resrl.plan.phases import make_plan

    plan = make_plan(load_plan_config(overrides), te_available=False)
    out = {}
    for ph in plan.phases:
        total = sum(c.bytes for c in ph.components if not c.name.startswith("CUDA context"))
        out[ph.name] = total / GIB
    return out


def run_streamed(cmd: list[str], env: dict, timeout: float, prefix: str = "loop| ") -> tuple[int | None, str]:
    """Runs ``cmd`` in its own session, its output copied line by line to this process's stdout as it comes
    (what a killed check leaves is in the check's console log); the session is killed after ``timeout``
    seconds, the child with this process. Returns the exit status (None: killed) and the output's last
    4000 characters."""
    lines: collections.deque[str] = collections.deque(maxlen=400)
    proc = subprocess.Popen(  # dies with this process too (gpu_check.sh's hard limit kills it)
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )

    def copy() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(prefix + line)
            sys.stdout.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
        lines.append(f"killed after {timeout:.0f} s\n")
    reader.join(timeout=10)
    return rc, "".join(lines)[-4000:]


def run_loop(device: str, work: Path, deadline: float | None = None, timeout: float = 420.0) -> dict:
    """Build the model, run the steps in a child process, compare (module docstring). The child runs at
    most ``timeout`` seconds, and ends 15 s before ``deadline`` (``time.monotonic()``) when one is given:
    what is left to read its metrics and write the report."""
    work.mkdir(parents=True, exist_ok=True)
    spec = LOOP_GPU if device == "cuda" else LOOP_CPU
    model = digit_answering_qwen3(work / "model", spec["shape"], tokenizer_dir(), device)
    if device == "cuda":
        torch.cuda.empty_cache()
    run_dir = work / "run"
    overrides = loop_overrides(device, model, run_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    shims = write_shims(work / "shims")
    if shims:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(work / "shims"), env.get("PYTHONPATH", "")) if p)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "nemo_resrl.cli", "train", *overrides]
    if deadline is not None:  # after the model is built: that took some of the time
        timeout = max(1.0, min(timeout, deadline - time.monotonic() - 15.0))
    rc, tail = run_streamed(cmd, env, timeout)
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    res: dict = {"shape": spec["shape"], "overrides": overrides, "returncode": rc, "steps": len(rows)}
    res["shims"] = shims
    res["ok"] = False
    if rc != 0:  # the steps that finished are still reported below (a run cut by its time limit)
        res["log_tail"] = tail
    if not rows:
        return res
    keys = ("reward/accuracy", "resrl/groups_active", "rollout/token_mult_prob_error", "response/length_mean")
    res["per_step"] = [{k: r.get(k) for k in keys} for r in rows]
    res["phase_seconds"] = {ph: [r.get(f"time/{ph}_s") for r in rows] for ph in PHASES}
    res["resrl_groups_active"] = sum(r.get("resrl/groups_active", 0) for r in rows)
    plan = planned_phases(overrides)
    res["planned_gib"] = {PHASES[ph]: plan[PHASES[ph]] for ph in PHASES}
    if device == "cuda":
        peak = {PHASES[ph]: max(r.get(f"memory/{ph}_peak_gib", 0.0) for r in rows) for ph in PHASES}
        res["peak_gib"] = peak
        res["peak_over_plan"] = {k: peak[k] / plan[k] for k in peak}
        res["phases_within_15_percent"] = all(abs(x - 1) <= 0.15 for x in res["peak_over_plan"].values())
    finite = all(
        math.isfinite(v) for r in rows for v in (r.get(k) for k in keys) if isinstance(v, (int, float))
    )
    consistent = all(r.get("rollout/token_mult_prob_error", 99) < 1.25 for r in rows)
    every = len(rows) == int(next(o for o in overrides if o.startswith("trainer.steps=")).split("=")[1])
    res["ok"] = rc == 0 and every and finite and consistent
    return res
