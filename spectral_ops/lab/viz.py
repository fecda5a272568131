"""Pictures of latent traversals: PNG grids (Pillow) and singular-value plots (matplotlib, lazily).

Every grid has one row per direction and one column per point along the path, with z0 in the
middle column.  Three kinds of rows:

- `coordinate_traversal`: z0 + t e_i along coordinate axis i (t in [-span, span]);
- `line_traversal`: z0 + t v_i(z0), a straight line along the i-th right-singular vector at z0;
- `trajectory_traversal`: the curved path that keeps following v_i (`trace_trajectory`, both
  ways, arc length `span` each way), sampled at n evenly spaced points.

All three use the same latent distance per column, so rows are comparable. Where a caller has no
z0 of its own, `typical_latent(d, seed=...)` gives one where a Gaussian latent's mass lies: a
seeded N(0, I) draw rescaled to norm sqrt(d) (z = 0 is atypical: ||z|| is about sqrt(d) for
z ~ N(0, I), and generators often render nothing there).

How outputs are drawn (`to_images`):
- (N, C, H, W) with C = 1 (grey) or 3 (RGB) are images; other C show the first channel.
- (N, m) vectors are reshaped to a square grey image when m is a perfect square >= 4; otherwise
  each is drawn as a line plot (value against index) on a small tile, with one y-range shared
  by the whole grid.
- Values map to [0, 255] with `value_range`: "auto" (default) uses [0, 1] when every value lies
  there, [-1, 1] when every value lies there (tanh outputs), else the grid's min..max; or give
  an explicit (lo, hi).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw

from spectral_ops.latents import validate_latents
from spectral_ops.lab.io import atomic_save_image, atomic_write_bytes
from spectral_ops.topk import jacobian_topk
from spectral_ops.trajectory import Trajectory, trace_trajectory

PLOT_TILE = (64, 40)  # width, height of a line-plot tile for vector outputs


def _single_latent(z0: torch.Tensor) -> torch.Tensor:
    if isinstance(z0, torch.Tensor) and z0.dim() == 1:
        z0 = z0[None]
    z0 = validate_latents(z0, "z0")
    if z0.shape[0] != 1:
        raise ValueError(f"z0 must be one latent, [d] or [1, d], got shape {tuple(z0.shape)}")
    return z0.detach()


def typical_latent(d: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A typical latent for N(0, I_d): a seeded Gaussian draw rescaled to norm sqrt(d), shape (1, d)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be an int >= 1, got {d!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    z = torch.randn(1, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z * (math.sqrt(d) / z.norm().clamp_min(1e-12))
    return z.to(dtype)


@torch.no_grad()
def generate(G: Callable, z: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """G applied to z [N, d] in chunks without a graph; returns the stacked outputs [N, ...]."""
    outs = [G(z[i : i + chunk]).detach() for i in range(0, z.shape[0], chunk)]
    return torch.cat(outs, dim=0)


def _resolve_range(x: torch.Tensor, value_range) -> tuple[float, float]:
    if value_range != "auto":
        lo, hi = value_range
        if not hi > lo:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range!r}")
        return float(lo), float(hi)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= -1 and hi <= 1:
        return -1.0, 1.0
    return (lo, hi) if hi > lo else (lo - 1.0, lo + 1.0)


def to_images(outputs: torch.Tensor, value_range="auto") -> list[Image.Image]:
    """Outputs [N, C, H, W] or [N, m] -> N Pillow images (see module docstring for the rules)."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"outputs must be a torch.Tensor, got {type(outputs).__name__}")
    x = outputs.detach().float().cpu()
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if x.dim() == 4:
        if x.shape[1] not in (1, 3):
            x = x[:, :1]
    elif x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1] and side >= 2:
            x = x.reshape(x.shape[0], 1, side, side)
        else:
            return _line_plots(x, value_range)
    elif x.dim() == 3:  # [N, H, W]
        x = x[:, None]
    else:
        raise ValueError(f"outputs must be [N, C, H, W], [N, H, W] or [N, m], got shape {tuple(x.shape)}")
    lo, hi = _resolve_range(x, value_range)
    u8 = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    images = []
    for img in u8:
        if img.shape[0] == 1:
            images.append(Image.fromarray(img[0].numpy(), mode="L").convert("RGB"))
        else:
            images.append(Image.fromarray(img.permute(1, 2, 0).contiguous().numpy(), mode="RGB"))
    return images


def _line_plots(x: torch.Tensor, value_range) -> list[Image.Image]:
    lo, hi = _resolve_range(x, value_range)
    W, H = PLOT_TILE
    m = x.shape[1]
    images = []
    for row in x:
        img = Image.new("RGB", (W, H), "white")
        draw = ImageDraw.Draw(img)
        ys = ((row - lo) / (hi - lo)).clamp(0, 1)
        pts = [(2 + (W - 4) * (i / max(m - 1, 1)), H - 2 - (H - 4) * float(y)) for i, y in enumerate(ys)]
        if lo < 0 < hi:  # the zero line
            y0 = H - 2 - (H - 4) * (-lo / (hi - lo))
            draw.line([(0, y0), (W, y0)], fill=(200, 200, 200))
        draw.line(pts if len(pts) > 1 else pts * 2, fill=(20, 60, 160), width=1)
        images.append(img)
    return images


def make_grid(
    rows: torch.Tensor,
    *,
    row_labels: Sequence[str] | None = None,
    value_range="auto",
    pad: int = 2,
    scale: int = 1,
    label_width: int | None = None,
) -> Image.Image:
    """A grid image from outputs [R, N, ...] (R rows of N columns), one value range for all.

    row_labels: optional R strings drawn left of the rows.  scale: integer pixel upscaling.
    """
    if not isinstance(rows, torch.Tensor) or rows.dim() < 3:
        raise ValueError("rows must be a tensor [R, N, ...] of generator outputs")
    R, N = rows.shape[:2]
    if row_labels is not None and len(row_labels) != R:
        raise ValueError(f"row_labels must have {R} entries, got {len(row_labels)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    tiles = to_images(rows.reshape(R * N, *rows.shape[2:]), value_range)
    tw, th = tiles[0].size
    tw, th = tw * scale, th * scale
    lw = 0 if row_labels is None else (label_width or 8 + 6 * max(len(s) for s in row_labels))
    grid = Image.new("RGB", (lw + N * (tw + pad) + pad, R * (th + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r in range(R):
        if row_labels is not None:
            draw.text((4, pad + r * (th + pad) + th // 2 - 5), str(row_labels[r]), fill=(0, 0, 0))
        for c in range(N):
            tile = tiles[r * N + c]
            if scale > 1:
                tile = tile.resize((tw, th), Image.NEAREST)
            grid.paste(tile, (lw + pad + c * (tw + pad), pad + r * (th + pad)))
    return grid


def _offsets(span: float, n: int) -> torch.Tensor:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not (isinstance(span, (int, float)) and math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a finite number > 0, got {span!r}")
    return torch.linspace(-span, span, n, dtype=torch.float64)


def _check_dims(dims, d: int, name: str) -> list[int]:
    dims = list(dims)
    if not dims:
        raise ValueError(f"{name} must name at least one index")
    for i in dims:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d:
            raise ValueError(f"{name} must be ints in [0, {d}), got {i!r}")
    return dims


def coordinate_traversal(
    G: Callable, z0: torch.Tensor, dims: Sequence[int], *, span: float = 2.0, n: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs along z0 + t e_i, t in linspace(-span, span, n), for i in dims.

    Returns (outputs [len(dims), n, ...], latents [len(dims), n, d])."""
    z0 = _single_latent(z0)
    d = z0.shape[1]
    dims = _check_dims(dims, d, "dims")
    t = _offsets(span, n).to(z0.dtype)
    eye = torch.eye(d, dtype=z0.dtype)
    Z = z0[None] + t[None, :, None] * eye[dims][:, None, :]
    out = generate(G, Z.reshape(-1, d))
    return out.reshape(len(dims), n, *out.shape[1:]), Z


def line_traversal(
    G: Callable, z0: torch.Tensor, directions: Sequence[int], *, span: float = 2.0, n: int = 9, **topk_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs along the straight lines z0 + t v_i(z0) (the i-th right-singular vector at z0).

    Returns (outputs [len(directions), n, ...], latents [len(directions), n, d])."""
    z0 = _single_latent(z0)
    d = z0.shape[1]
    directions = _check_dims(directions, d, "directions")
    top = jacobian_topk(G, z0, max(directions) + 1, **topk_kwargs)
    return vector_traversal(G, z0, top.vectors[0, directions], span=span, n=n)


def vector_traversal(
    G: Callable, z0: torch.Tensor, V: torch.Tensor, *, span: float = 2.0, n: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs along the straight lines z0 + t v for each row v of V [r, d] (e.g. global directions).

    Returns (outputs [r, n, ...], latents [r, n, d])."""
    z0 = _single_latent(z0)
    d = z0.shape[1]
    if not isinstance(V, torch.Tensor) or V.dim() != 2 or V.shape[1] != d:
        raise ValueError(f"V must be a tensor [r, {d}], got {tuple(V.shape) if isinstance(V, torch.Tensor) else V!r}")
    t = _offsets(span, n).to(z0.dtype)
    V = V.detach().to(z0.dtype)
    Z = z0[None] + t[None, :, None] * V[:, None, :]
    out = generate(G, Z.reshape(-1, d))
    return out.reshape(V.shape[0], n, *out.shape[1:]), Z


def trajectory_traversal(
    G: Callable,
    z0: torch.Tensor,
    directions: Sequence[int],
    *,
    span: float = 2.0,
    n: int = 9,
    steps: int = 16,
    method: str = "rk4",
    project=None,
    **trace_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, list[Trajectory]]:
    """Outputs along the curved trajectories of v_i, both ways from z0, arc length `span` each way.

    Each trajectory takes `steps` steps each way (step size span/steps); n points are picked at
    evenly spaced arc lengths (nearest traced point; pick n - 1 dividing 2*steps for exact spacing).
    Returns (outputs [len(directions), n, ...], latents [len(directions), n, d], trajectories).
    """
    z0 = _single_latent(z0)
    d = z0.shape[1]
    directions = _check_dims(directions, d, "directions")
    _offsets(span, n)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    cols = torch.linspace(0, 2 * steps, n).round().long()
    trajs, Z = [], []
    for i in directions:
        tr = trace_trajectory(
            G,
            z0,
            i,
            steps=steps,
            step_size=span / steps,
            method=method,
            project=project,
            both_ways=True,
            **trace_kwargs,
        )
        trajs.append(tr)
        Z.append(tr.z[cols, 0])
    Z = torch.stack(Z)
    out = generate(G, Z.reshape(-1, d))
    return out.reshape(len(directions), n, *out.shape[1:]), Z, trajs


def save_grid(rows: torch.Tensor, path, **kwargs) -> Image.Image:
    """make_grid(rows, **kwargs) saved as a PNG at path (atomically; parent folders created)."""
    img = make_grid(rows, **kwargs)
    atomic_save_image(img, path)
    return img


def plot_singular_values(traj: Trajectory, path, *, sample: int = 0, title: str | None = None):
    """Plot the top-k singular values along a trajectory (x = signed arc length from z0), marking
    the tracked one; saved as a PNG at path.  Uses matplotlib (imported here, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from pathlib import Path

    B = traj.z.shape[1]
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < B:
        raise ValueError(f"sample must be an int in [0, {B}), got {sample!r}")
    T1, _, k = traj.values.shape
    s = (torch.arange(T1, dtype=torch.float64) - traj.origin) * traj.step_size
    vals = traj.values[:, sample].double().cpu()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for i in range(k):
        ax.plot(s, vals[:, i], lw=1, label=f"s{i + 1}")
    ax.plot(
        s, traj.tracked_values[:, sample].double().cpu(), "k--", lw=1.5, label=f"tracked (start: s{traj.direction + 1})"
    )
    ax.set_xlabel("latent arc length from z0")
    ax.set_ylabel("singular value")
    ax.set_title(title or f"singular values along trajectory ({traj.method})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


__all__ = [
    "to_images",
    "make_grid",
    "save_grid",
    "coordinate_traversal",
    "line_traversal",
    "trajectory_traversal",
    "plot_singular_values",
    "generate",
    "typical_latent",
]
