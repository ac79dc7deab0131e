"""Input validation shared by the algorithm functions: clear errors at the boundary, never NaN later."""

from __future__ import annotations

import torch


def require(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond``."""
    if not cond:
        raise ValueError(msg)


def require_finite(t: torch.Tensor, name: str, mask: torch.Tensor | None = None) -> None:
    """Raise if ``t`` (restricted to ``mask`` when given) holds NaN or +-inf, naming how many and where."""
    vals = t if mask is None else t[mask.bool()]
    bad = ~torch.isfinite(vals)
    if bool(bad.any()):
        n = int(bad.sum())
        if bad.dim() >= 1:
            first = [int(i) for i in torch.nonzero(bad)[0].tolist()]
        else:
            first = []
        raise ValueError(f"{name} has {n} non-finite value(s) (NaN or inf); first at index {first}")


def require_shape(t: torch.Tensor, shape: tuple, name: str) -> None:
    """``shape`` entries may be None (any size)."""
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    require(
        ok, f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, got {tuple(t.shape)}"
    )


def require_probability(x: float, name: str, *, open_low: bool = False, open_high: bool = False) -> None:
    lo_ok = x > 0 if open_low else x >= 0
    hi_ok = x < 1 if open_high else x <= 1
    require(
        lo_ok and hi_ok,
        f"{name} must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}, got {x}",
    )
