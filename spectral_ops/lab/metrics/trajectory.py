"""Trajectory purity: does a latent path change one ground-truth factor at a time?

Definition.  Along a path with points t = 0..T, let c_j be the *total change* of factor j,

    c_j = sum_t  delta_j(t, t+1),

the total variation of the factor along the path (back-and-forth motion counts, not only the
net change).  Factors are normalised so that their changes are comparable:

- an ordinal factor is a value in [0, 1] (0 = its lowest level, 1 = its highest; this is what
  `FactorPredictor.predict` returns), and delta_j = |f_j(t+1) - f_j(t)|;
- a categorical factor (e.g. shape) is a probability vector p over its classes, and
  delta_j = 0.5 * ||p(t+1) - p(t)||_1 (total-variation distance, in [0, 1]: a full switch of
  class counts as 1, the same as sweeping an ordinal factor over its whole range).  Given as a
  class index (a column flagged in `categorical`), delta_j = 1 per change of index.

    purity = max_j c_j / sum_j c_j          in [1/F, 1]  (1: a single factor changed)

and 0 for a path along which nothing changed (no division by zero, never NaN).

Comparing path kinds fairly.  Paths of different kinds (curved trajectories, straight lines
along singular vectors, coordinate axes) are compared at the same *output-space path length*
L = sum_t ||G(z_{t+1}) - G(z_t)||_2: `resample_by_output_length` cuts every path where its output
arc length reaches L and resamples it at n points evenly spaced in output arc length (linear
interpolation in z between the traced points).  So every path changes the image by the same
amount, and purity only measures how that change is shared among factors.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from spectral_ops.validation import check_int


def _check_path(x, name: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points along its first axis, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values")
    return x


def purity_from_changes(changes: Tensor) -> Tensor:
    """Per-factor total changes [..., F] (>= 0) -> purity [...] = max / sum, 0 where sum is 0."""
    total = changes.sum(-1)
    top = changes.max(-1).values
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(changes.dtype).tiny), torch.zeros_like(total))


@torch.no_grad()
def factor_changes(
    path: Tensor,
    *,
    predictor=None,
    categorical: Sequence[bool] | None = None,
    scale: Sequence[float] | Tensor | None = None,
    batch_size: int = 512,
) -> Tensor:
    """Total change of every factor along each path: [B, F] (or [F] for a single path).

    Without a predictor, `path` holds factors (T+1, F) or (T+1, B, F): ordinal columns already in
    comparable units (divide by `scale` [F] first if given), categorical columns (flags in
    `categorical`) as class indices.  With a `FactorPredictor`, `path` holds images
    (T+1, C, H, W) or (T+1, B, C, H, W) in [0, 1]; ordinal factors use its [0, 1] regression
    output and categorical ones its softmax probabilities.
    """
    path = _check_path(path, "path")
    if predictor is None:
        single = path.dim() == 2
        x = path[:, None] if single else path
        if x.dim() != 3:
            raise ValueError(f"path of factors must be (T+1, F) or (T+1, B, F), got shape {tuple(path.shape)}")
        x = x.double()
        F = x.shape[-1]
        if scale is not None:
            s = torch.as_tensor(scale, dtype=torch.float64)
            if s.shape != (F,) or not bool((s > 0).all()):
                raise ValueError(f"scale must be {F} positive numbers, got {scale!r}")
            x = x / s
        d = (x[1:] - x[:-1]).abs()
        if categorical is not None:
            cat = torch.as_tensor(list(categorical), dtype=torch.bool)
            if cat.shape != (F,):
                raise ValueError(f"categorical must have {F} flags, got {len(cat)}")
            d = torch.where(cat, (d > 0).double(), d)
        out = d.sum(0)
        return out[0] if single else out
    # With a predictor: images.
    single = path.dim() == 4
    x = path[:, None] if single else path
    if x.dim() != 5:
        raise ValueError(f"path of images must be (T+1, C, H, W) or (T+1, B, C, H, W), got shape {tuple(path.shape)}")
    T1, B = x.shape[:2]
    flat = x.reshape(T1 * B, *x.shape[2:]).float()
    was_training = predictor.training
    predictor.eval()
    per_factor: list[list[Tensor]] = [[] for _ in predictor.categorical]
    for start in range(0, flat.shape[0], batch_size):
        outs = predictor(flat[start : start + batch_size])
        for j, (o, cat) in enumerate(zip(outs, predictor.categorical)):
            per_factor[j].append(o.softmax(-1) if cat else o.clamp(0, 1)[:, None])
    predictor.train(was_training)
    cols = []
    for j, cat in enumerate(predictor.categorical):
        p = torch.cat(per_factor[j]).double().reshape(T1, B, -1)
        step = (p[1:] - p[:-1]).abs().sum(-1)
        cols.append(0.5 * step if cat else step)
    out = torch.stack(cols, -1).sum(0)
    return out[0] if single else out


def trajectory_purity(
    path: Tensor, *, predictor=None, categorical: Sequence[bool] | None = None, scale=None, return_changes: bool = False
):
    """Purity of each path (see module docstring): [B] in [1/F, 1] (0-d for a single path).

    path: factors (T+1, [B,] F) or, with `predictor`, images (T+1, [B,] C, H, W).
    return_changes: also return the per-factor total changes [B, F].
    """
    changes = factor_changes(path, predictor=predictor, categorical=categorical, scale=scale)
    purity = purity_from_changes(changes)
    return (purity, changes) if return_changes else purity


@torch.no_grad()
def output_arc_length(G: Callable, Z: Tensor, chunk: int = 512) -> Tensor:
    """Cumulative output arc length along paths Z (T+1, B, d): (T+1, B), starting at 0."""
    T1, B, d = Z.shape
    flat = Z.reshape(T1 * B, d)
    Y = torch.cat(
        [G(flat[i : i + chunk]).reshape(min(chunk, flat.shape[0] - i), -1) for i in range(0, flat.shape[0], chunk)]
    )
    Y = Y.reshape(T1, B, -1).double()
    seg = (Y[1:] - Y[:-1]).norm(dim=-1)
    return torch.cat([torch.zeros(1, B, dtype=seg.dtype, device=seg.device), seg.cumsum(0)])


@torch.no_grad()
def resample_by_output_length(
    G: Callable, Z: Tensor, length: float, n: int, arc: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cut each path Z (T+1, B, d) at output arc length `length` and resample it at n points
    evenly spaced in output arc length (linear interpolation in z between traced points).

    Returns (Zs (n, B, d), reached (B,) bool: whether the path was long enough; a path that is
    too short is resampled over its whole length and flagged False).
    """
    if not length > 0:
        raise ValueError(f"length must be > 0, got {length!r}")
    check_int("n", n, 2)
    arc = output_arc_length(G, Z) if arc is None else arc
    T1, B, d = Z.shape
    total = arc[-1]
    reached = total >= length
    target_len = torch.where(reached, torch.full_like(total, float(length)), total)
    targets = torch.linspace(0, 1, n, dtype=arc.dtype)[:, None] * target_len[None]  # (n, B)
    out = torch.empty(n, B, d, dtype=Z.dtype)
    for b in range(B):
        a = arc[:, b].contiguous()
        idx = torch.searchsorted(a, targets[:, b].contiguous(), right=True).clamp(1, T1 - 1)
        a0, a1 = a[idx - 1], a[idx]
        w = torch.where(a1 > a0, (targets[:, b] - a0) / (a1 - a0).clamp_min(1e-300), torch.zeros_like(a0)).clamp(0, 1)
        out[:, b] = Z[idx - 1, b] + w[:, None].to(Z.dtype) * (Z[idx, b] - Z[idx - 1, b])
    return out, reached


__all__ = [
    "trajectory_purity",
    "factor_changes",
    "purity_from_changes",
    "output_arc_length",
    "resample_by_output_length",
]
