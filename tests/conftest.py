"""Shared pytest set-up: GPU tests are skipped (with the reason shown) on machines without CUDA."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torchrun():
    """``torchrun(module, *args, nproc=2, timeout=900, log=None)``: run a probe (``tests/launch.py``)."""
    from tests.launch import run_module

    return run_module
