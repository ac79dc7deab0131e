"""``ReferenceWeights``: the reference policy's host copy, swapped with the model's weights."""

from __future__ import annotations

import pytest
import torch

from nemo_resrl.models.reference import ReferenceWeights


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        torch.nn.Parameter(torch.randn(5, generator=g)),
    ]


def test_the_reference_is_the_weights_at_construction_and_the_swap_restores_the_model_bit_for_bit():
    params = _params(0)
    initial = [p.detach().clone() for p in params]
    ref = ReferenceWeights(params)
    assert ref.nbytes == (12 + 5) * 4
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))  # training moves the weights
    trained = [p.detach().clone() for p in params]
    with ref.swapped_in():
        assert all(torch.equal(p, w) for p, w in zip(params, initial))
    assert all(torch.equal(p, w) for p, w in zip(params, trained))
    with pytest.raises(RuntimeError, match="inside"), ref.swapped_in():
        raise RuntimeError("inside")
    assert all(torch.equal(p, w) for p, w in zip(params, trained))  # restored after an error too
    with ref.swapped_in():  # and the reference is intact after the swaps
        assert all(torch.equal(p, w) for p, w in zip(params, initial))


def test_load_with_makes_the_loaded_weights_the_reference_and_keeps_the_models_own():
    params = _params(0)
    ref = ReferenceWeights(params)
    own = [p.detach().clone() for p in params]
    saved = [p.detach().clone() for p in _params(7)]  # what a checkpoint's reference/ holds

    def load():
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)

    ref.load_with(load)
    assert all(torch.equal(p, w) for p, w in zip(params, own))
    with ref.swapped_in():
        assert all(torch.equal(p, w) for p, w in zip(params, saved))
