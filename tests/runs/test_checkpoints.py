"""The random state a run checkpoint saves per rank (``nemo_resrl.runs.checkpoints.rng_state``): every
generator a resumed step draws from comes back, so the resume repeats the uninterrupted run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nemo_resrl.runs.checkpoints import rng_state, set_rng_state

TRACKER_ROUND_TRIP = """
import torch
from nemo_resrl.compat import megatron_cpu
megatron_cpu.install(("rng",))
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from nemo_resrl.runs.checkpoints import rng_state, set_rng_state
tracker = get_cuda_rng_tracker()
tracker.add("model-parallel-rng", 1234)
state = rng_state()
with tracker.fork():
    first = torch.rand(4)
torch.rand(3)
with tracker.fork():
    torch.rand(2)  # the tracker's stream moves on
set_rng_state(state)
with tracker.fork():
    again = torch.rand(4)
assert torch.equal(first, again), (first, again)
print("ROUND TRIP OK")
"""


def test_cpu_python_and_numpy_generators_come_back():
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()
    set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_megatrons_tracker_states_come_back():
    """Megatron draws tensor-parallel dropout masks from its tracker's named states, not from the default
    generator: restoring the default generator alone would give a resumed step other masks."""
    res = subprocess.run([sys.executable, "-c", TRACKER_ROUND_TRIP], capture_output=True, text=True)
    assert res.returncode == 0 and "ROUND TRIP OK" in res.stdout, res.stdout + res.stderr[-3000:]


@pytest.mark.gpu
def test_the_cuda_generator_comes_back():
    torch.cuda.manual_seed(3)
    torch.rand(1, device="cuda")  # CUDA is initialised: its generator is part of the state
    state = rng_state()
    first = torch.rand(8, device="cuda")
    torch.rand(8, device="cuda")
    set_rng_state(state)
    assert torch.equal(first, torch.rand(8, device="cuda"))
