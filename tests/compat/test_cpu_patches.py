"""Each CPU patch, shown necessary: the operation fails without it and works with it.

The patches are process-wide, so every case runs megatron-core in a fresh subprocess
(``tests/compat/mcore_probe.py``), with one patch left out.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_resrl.compat import te_stub
from tests.launch import run_module

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.distributed


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _probe(op: str, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    port = _free_port()
    env = dict(os.environ, PROBE_PORT=port, PYTHONPATH=str(ROOT))
    return run_module("tests.compat.mcore_probe", op, *extra, nproc=nproc, timeout=300, env=env)


def _ok(res: subprocess.CompletedProcess, times: int = 1) -> None:
    assert res.returncode == 0 and res.stdout.count("PROBE OK") == times, (
        res.stdout[-2000:] + res.stderr[-4000:]
    )


def _fails(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode != 0, res.stdout[-2000:]
    assert needle in res.stderr, res.stderr[-4000:]


@pytest.mark.slow  # every actor test of the development loop runs with all of them too
def test_forward_and_train_step_work_with_all_patches():
    _ok(_probe("forward"))
    _ok(_probe("train_clip"))


@pytest.mark.slow
@pytest.mark.parametrize("part", ["rng", "device"])
def test_model_build_needs_rng_and_device_patches(part):
    _fails(_probe("forward", "--skip", part), "Torch not compiled with CUDA enabled")


@pytest.mark.slow
def test_schedule_and_grad_clipping_need_the_cuda_to_cpu_mode():
    _fails(_probe("train", "--skip", "mode"), "Torch not compiled with CUDA enabled")
    _fails(_probe("train_clip", "--skip", "mode"), "Torch not compiled with CUDA enabled")


@pytest.mark.slow
def test_activation_recomputation_needs_the_recompute_patch():
    _ok(_probe("recompute"))
    _fails(_probe("recompute", "--skip", "recompute"), "Torch not compiled with CUDA enabled")


@pytest.mark.slow
def test_pipeline_parallel_needs_the_synchronize_patch():
    _ok(_probe("pp2", nproc=2), times=2)
    _fails(_probe("pp2", "--skip", "sync", nproc=2), "Torch not compiled with CUDA enabled")


@pytest.mark.slow
def test_gloo_scatter_of_non_contiguous_views_needs_the_contiguous_patch():
    _ok(_probe("scatter", nproc=2), times=2)
    _fails(_probe("scatter", "--no-scatter-fix", nproc=2), "want")


@pytest.mark.slow
def test_megatron_bridge_imports_with_a_scoped_te_stub():
    code = (
        "import sys; from nemo_resrl.compat import import_megatron_bridge, transformer_engine_available\n"
        "assert not transformer_engine_available()\n"
        "mb = import_megatron_bridge(); from megatron.bridge import AutoBridge\n"
        "assert 'transformer_engine' not in sys.modules  # the stub is gone after the import\n"
        "print('BRIDGE OK', mb.__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "BRIDGE OK megatron.bridge" in res.stdout, res.stderr[-3000:]
    # without the stub the import fails: the reason the stub exists
    res = subprocess.run(
        [sys.executable, "-c", "import megatron.bridge"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode != 0 and "transformer_engine" in res.stderr


def test_te_stub_modules_refuse_to_build():
    with te_stub.stubbed_transformer_engine():
        import transformer_engine.pytorch as te

        with pytest.raises(RuntimeError, match="TransformerEngine is not installed"):
            te.Linear(4, 4)
    assert "transformer_engine" not in sys.modules


def test_a_transformer_engine_that_does_not_import_says_why(tmp_path):
    """An install built for another torch / CUDA is found by the package check; on a GPU the actor then
    imports it and reports the real error instead of crashing deep inside the model build."""
    pkg = tmp_path / "transformer_engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ImportError('libtransformer_engine.so: undefined symbol: _ZN3c104cuda')\n"
    )
    code = (
        "from nemo_resrl.compat.te_stub import TransformerEngineImportError, transformer_engine_available\n"
        "assert transformer_engine_available()  # found: the plain check cannot tell\n"
        "try:\n"
        "    transformer_engine_available(check_import=True)\n"
        "except TransformerEngineImportError as e:\n"
        "    print('REFUSED', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "REFUSED" in res.stdout and "undefined symbol: _ZN3c104cuda" in res.stdout
    assert "actor.layer_spec local" in res.stdout


def test_the_adam_state_workarounds_take_a_fused_adam_too():
    """With TransformerEngine (or Apex) installed megatron-core builds a ``FusedAdam``, which keeps its
    step per parameter group: the resume workarounds must find it and put the step back there."""
    from types import SimpleNamespace

    import torch

    from nemo_resrl.compat.megatron_optimizer import ensure_optimizer_state, inner_adams, restore_adam_step

    class FusedAdam(torch.optim.Optimizer):  # the shape of TE's: moments per parameter, step per group
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

        @torch.no_grad()
        def step(self):
            for g in self.param_groups:
                g["step"] = g.get("step", 0) + 1
                for p in g["params"]:
                    st = self.state[p]
                    st.setdefault("exp_avg", torch.zeros_like(p)).add_(p.grad)
                    st.setdefault("exp_avg_sq", torch.zeros_like(p)).add_(p.grad**2)

    p = torch.nn.Parameter(torch.ones(3))
    wrapped = SimpleNamespace(optimizer=FusedAdam([p]))
    assert inner_adams(wrapped) == [wrapped.optimizer]
    ensure_optimizer_state(wrapped)  # a fresh optimizer gets its state tensors before a load
    assert set(wrapped.optimizer.state[p]) == {"exp_avg", "exp_avg_sq"}
    restore_adam_step(wrapped, {"optimizer": {"param_groups": [{"step": 7}]}})
    assert wrapped.optimizer.param_groups[0]["step"] == 7
