"""A scoped stand-in for ``transformer_engine`` so megatron-bridge imports where TE is not installed.

megatron-bridge 0.3.1 imports ``transformer_engine.pytorch`` at module level (its LoRA layers subclass
``te.Linear``) on the import path of ``AutoBridge``; the dense Qwen3 / Llama conversion never calls TE.
``import_megatron_bridge()`` imports megatron.core first (so megatron.core's own ``HAVE_TE`` checks
still see no TE and pick the torch code paths), puts the stub in ``sys.modules`` only while
``megatron.bridge`` imports, then removes it, so later ``import transformer_engine`` fails as it should.
Any attempt to build a TE module through the stub raises a clear error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import torch

STUB_VERSION = "0.0.0+nemo_resrl_stub"


class TransformerEngineImportError(ImportError):
    """TransformerEngine is installed but does not import (typically a build for another torch / CUDA)."""


def transformer_engine_available(check_import: bool = False) -> bool:
    """Whether TransformerEngine is installed. ``check_import``: also import ``transformer_engine.pytorch``
    and raise ``TransformerEngineImportError`` with the real error if that fails (an ABI mismatch passes
    the installed-package check and would crash later, deep inside the model build)."""
    mod = sys.modules.get("transformer_engine")
    if mod is not None and getattr(mod, "__version__", "") == STUB_VERSION:
        return False
    spec = importlib.util.find_spec("transformer_engine") if mod is None else mod.__spec__
    if spec is None:
        return False
    if check_import:
        try:
            importlib.import_module("transformer_engine.pytorch")
        except Exception as e:
            raise TransformerEngineImportError(
                f"TransformerEngine is installed ({spec.origin}) but does not import: "
                f"{type(e).__name__}: {e}. Its build must match this torch and CUDA: reinstall it for "
                "them, or uninstall it and set actor.layer_spec local"
            ) from e
    return True


class _Unavailable(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "TransformerEngine is not installed: this megatron-bridge feature (LoRA / TE layers) needs it. "
            "Install nemo_resrl with the gpu extra on a CUDA machine."
        )


def _make_stub() -> dict[str, types.ModuleType]:
    te = types.ModuleType("transformer_engine")
    te.__version__ = STUB_VERSION
    tp = types.ModuleType("transformer_engine.pytorch")
    tp.Linear = type("Linear", (_Unavailable,), {})
    tp.LayerNormLinear = type("LayerNormLinear", (_Unavailable,), {})
    names = ("Sequential", "Linear", "LayerNorm", "RMSNorm", "Quantize", "MakeExtraOutput", "Dropout")
    tp.ops = types.SimpleNamespace(**{n: _Unavailable for n in names + ("ConstantScale", "AddExtraInput")})
    tp.fp8_autocast = lambda *a, **k: contextlib.nullcontext()
    te.pytorch = tp
    return {"transformer_engine": te, "transformer_engine.pytorch": tp}


@contextlib.contextmanager
def stubbed_transformer_engine() -> Iterator[None]:
    """Within the block, ``import transformer_engine`` yields the stub (unless TE is installed)."""
    if transformer_engine_available():
        yield
        return
    stub = _make_stub()
    sys.modules.update(stub)
    try:
        yield
    finally:
        for name, mod in stub.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def import_megatron_bridge() -> types.ModuleType:
    """``import megatron.bridge`` whether or not TransformerEngine is installed."""
    if "megatron.bridge" in sys.modules:
        return sys.modules["megatron.bridge"]
    import megatron.core  # noqa: F401  (first: its HAVE_TE checks must see the real state)
    import megatron.core.optimizer  # noqa: F401

    with stubbed_transformer_engine():
        import megatron.bridge

    return megatron.bridge
