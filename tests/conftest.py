"""Shared pytest set-up: GPU tests are skipped (with the reason shown) on machines without CUDA; the
property tests (hypothesis) draw the same examples on every run, so that a CI result is reproducible
(``HYPOTHESIS_PROFILE=explore`` draws new ones)."""

import os

import pytest
import torch

try:
    from hypothesis import settings
except ImportError:  # a dev dependency: a lent GPU machine may lack it, and its gpu tests do not use it
    pass
else:
    settings.register_profile("ci", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
