"""The versions of megatron-core and vLLM whose APIs the code relies on, checked when they are first used
(the actor's build, the engine's start), with an error that names the version found and the one needed.

Relied on: megatron-core >= 0.16 (``StrictHandling.RETURN_ALL`` loads, the distributed optimizer's
sharded state; the torch-Adam checkpoint fixes of ``megatron_optimizer.py`` are written against 0.16);
vLLM >= 0.32 (``reload_weights(weights_iterator=...)`` for the in-place refit, ``logprobs_mode``,
sleep / wake by tag). Tested: megatron-core 0.16.1 and vLLM 0.32.0 (``tools/constraints-gpu.txt``);
other versions that pass the checks get a warning.
"""

from __future__ import annotations

import inspect
import logging

from packaging.version import Version

log = logging.getLogger(__name__)
MEGATRON_CORE = ("0.16", "0.16.1")  # (minimum, tested)
VLLM = ("0.32", "0.32.0")


class StackVersionError(RuntimeError):
    """An installed package too old (or changed) for the code; the message names found and needed."""


def _check(name: str, found: str, minimum: str, tested: str, install: str) -> None:
    if Version(found) < Version(minimum):
        raise StackVersionError(
            f"{name} {found} is installed; nemo_resrl needs >= {minimum} (tested: {tested}). {install}"
        )
    if Version(found).release[:3] != Version(tested).release[:3]:
        log.warning(
            "%s %s is not the tested version %s: the run may fail in untested ways", name, found, tested
        )


def check_megatron_core(found: str | None = None) -> None:
    if found is None:
        import megatron.core

        found = megatron.core.__version__
    _check(
        "megatron-core", found, *MEGATRON_CORE, "Install with tools/install.sh (tools/constraints-gpu.txt)."
    )


def check_vllm(found: str | None = None, reload_weights=None) -> None:
    """The version, and the signature the refit calls (``reload_weights(weights_iterator=...)``)."""
    if found is None:
        import vllm

        found = vllm.__version__
    _check("vllm", found, *VLLM, "Install with tools/install.sh (tools/constraints-gpu.txt).")
    if reload_weights is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        reload_weights = GPUModelRunner.reload_weights
    if "weights_iterator" not in inspect.signature(reload_weights).parameters:
        raise StackVersionError(
            f"vllm {found}: the model runner's reload_weights takes no weights_iterator, which the in-place "
            f"refit streams into; use vllm {VLLM[1]} (tools/constraints-gpu.txt)"
        )
