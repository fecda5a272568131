"""Procedural image datasets with known generative factors, rendered with torch.

Images are anti-aliased by evaluating a signed-distance function (SDF) at every pixel centre and
turning the distance, in pixels, into coverage with a one-pixel linear ramp
(`coverage = clamp(0.5 - distance_px, 0, 1)`), the box-filtered edge of a straight boundary.
Rendering is vectorised over the batch and the pixel grid, so tens of thousands of 32x32 images
take a few seconds on one core.

Conventions: factors are integer levels, a LongTensor (N, F); `factor_values` maps them to [0, 1].
Images are float32 (N, 1, S, S) in [0, 1], row index = y (downwards), column index = x.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from spectral_ops.validation import check_int, check_seed

__all__ = ["ProceduralDataset", "Sprites", "Dots", "Spot", "DATASETS", "make_dataset"]

_SIZES = (32, 64)


class ProceduralDataset(Dataset):
    """Base class: a fixed set of N images rendered from N random factor vectors.

    Subclasses set `name`, `factor_names`, `factor_sizes`, `categorical` and implement
    `_render_chunk(factors (n, F) long) -> (n, S, S) float`.

    Args:
        n: number of images (>= 1).
        size: image side in pixels, 32 or 64.
        seed: seed of the factor sampling; the same (n, size, seed) gives identical tensors.
        chunk: images rendered per vectorised call (bounds memory).

    Attributes:
        images: (n, 1, size, size) float32 in [0, 1].
        factors: (n, F) int64, factor levels; column j lies in [0, factor_sizes[j]).
    """

    name: str = ""
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    categorical: tuple[bool, ...] = ()
    #: factors that metrics measure on generated images (default: all of them)
    measured_factors: tuple[str, ...] | None = None

    def __init__(self, n: int = 10000, *, size: int = 32, seed: int = 0, chunk: int = 2048):
        check_int("n", n, 1)
        check_int("chunk", chunk, 1)
        if size not in _SIZES:
            raise ValueError(f"size must be one of {_SIZES}, got {size!r}")
        check_seed(seed, allow_none=False)
        self.size = size
        self.seed = seed
        self.chunk = chunk
        gen = torch.Generator().manual_seed(seed)
        self.factors = self.sample_factors(n, generator=gen)
        self.images = self.render(self.factors)

    # ----------------------------------------------------------------------------------------
    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @classmethod
    def measured(cls) -> tuple[str, ...]:
        """Names of the factors that disentanglement metrics use."""
        return cls.measured_factors if cls.measured_factors is not None else cls.factor_names

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniformly random factor levels, (n, F) int64."""
        check_int("n", n, 0)
        cols = [torch.randint(0, s, (n,), generator=generator) for s in self.factor_sizes]
        return torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.long)

    def factor_values(self, factors: Tensor | None = None) -> Tensor:
        """Factor levels (N, F) scaled to [0, 1] (level / (levels - 1)), float32."""
        f = self.factors if factors is None else factors
        sizes = torch.tensor(self.factor_sizes, dtype=torch.float32)
        return f.float() / (sizes - 1).clamp_min(1)

    def check_factors(self, factors: Tensor) -> Tensor:
        if not isinstance(factors, Tensor) or factors.dim() != 2 or factors.shape[1] != self.num_factors:
            raise ValueError(
                f"factors must be a (N, {self.num_factors}) integer tensor, got "
                f"{getattr(factors, 'shape', type(factors))}"
            )
        factors = factors.long()
        hi = torch.tensor(self.factor_sizes)
        bad = (factors < 0) | (factors >= hi)
        if bad.any():
            rows = bad.any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"factors out of range in rows {rows}; sizes are {dict(zip(self.factor_names, self.factor_sizes))}"
            )
        return factors

    @torch.no_grad()
    def render(self, factors: Tensor) -> Tensor:
        """Render factor levels (N, F) into images (N, 1, S, S) float32 in [0, 1]."""
        factors = self.check_factors(factors)
        out = torch.empty(factors.shape[0], 1, self.size, self.size)
        for start in range(0, factors.shape[0], self.chunk):
            stop = start + self.chunk
            out[start:stop, 0] = self._render_chunk(factors[start:stop])
        return out

    def _render_chunk(self, factors: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _grid(self) -> tuple[Tensor, Tensor]:
        """Pixel-centre coordinates in [0, 1]: (gx, gy), each (S, S)."""
        u = (torch.arange(self.size, dtype=torch.float32) + 0.5) / self.size
        gy, gx = torch.meshgrid(u, u, indexing="ij")
        return gx, gy

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        """(image (1, S, S), factors (F,))."""
        return self.images[i], self.factors[i]


# -------------------------------------------------------------------------------------------
# Signed-distance functions in a unit frame (shape roughly inside the unit disc); negative inside.
def _sdf_square(x: Tensor, y: Tensor) -> Tensor:
    h = 0.75
    dx, dy = x.abs() - h, y.abs() - h
    outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2)
    return outside + torch.maximum(dx, dy).clamp_max(0)


def _sdf_ellipse(x: Tensor, y: Tensor) -> Tensor:
    # Approximate ellipse distance (first-order), radii (1.0, 0.6).
    a, b = 1.0, 0.6
    k0 = torch.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = torch.sqrt((x / a**2) ** 2 + (y / b**2) ** 2).clamp_min(1e-6)
    return k0 * (k0 - 1.0) / k1


def _sdf_heart(x: Tensor, y: Tensor) -> Tensor:
    # Classic heart SDF (tip at the origin, lobes up to y ~ 1.1), scaled and centred.
    c = 0.7
    px = (x * c).abs()
    py = 0.55 - y * c  # image y points down; the tip points down
    lobe = torch.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2.0) / 4.0
    t = 0.5 * (px + py).clamp_min(0)
    body = torch.sqrt(torch.minimum(px**2 + (py - 1.0) ** 2, (px - t) ** 2 + (py - t) ** 2))
    body = body * torch.sign(px - py)
    return torch.where(px + py > 1.0, lobe, body) / c


def _sdf_triangle(x: Tensor, y: Tensor) -> Tensor:
    # Equilateral triangle, apex up, circumradius ~0.98.
    r, k = 0.85, math.sqrt(3.0)
    px = x.abs() - r
    py = -y + r / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(-2 * r, 0)
    return -torch.sqrt(px**2 + py**2) * torch.sign(py)


_SPRITE_SDFS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_sdf_square, _sdf_ellipse, _sdf_heart, _sdf_triangle)


class Sprites(ProceduralDataset):
    """dSprites-like sprites: shape (4) x scale (6) x rotation (40) x x-position (32) x y-position (32).

    Shapes are square, ellipse, heart, triangle. Scale runs from 0.5 to 1 (a full-scale sprite is
    about 0.36 of the image wide); rotation covers [0, 2 pi) in 40 steps; positions keep the sprite
    inside the frame. Images are (N, 1, S, S) float32 in [0, 1] (white sprite on black).

    Rotation is rendered but not measured (`measured_factors`): squares, ellipses and triangles are
    symmetric under some rotations, and at 32x32 one rotation step moves the outline by well under a
    pixel, so no predictor can read it reliably from an image.
    """

    name = "sprites"
    factor_names = ("shape", "scale", "rotation", "x", "y")
    factor_sizes = (4, 6, 40, 32, 32)
    categorical = (True, False, False, False, False)
    measured_factors = ("shape", "scale", "x", "y")
    shape_names = ("square", "ellipse", "heart", "triangle")
    radius = 0.18  # unit-frame radius at scale 1, as a fraction of the image side
    margin = 0.21  # centres lie in [margin, 1 - margin]

    def _render_chunk(self, f: Tensor) -> Tensor:
        S = self.size
        gx, gy = self._grid()
        scale = 0.5 + 0.5 * f[:, 1].float() / (self.factor_sizes[1] - 1)
        theta = 2 * math.pi * f[:, 2].float() / self.factor_sizes[2]
        span = 1 - 2 * self.margin
        cx = self.margin + span * f[:, 3].float() / (self.factor_sizes[3] - 1)
        cy = self.margin + span * f[:, 4].float() / (self.factor_sizes[4] - 1)
        rad = (self.radius * scale)[:, None, None]
        dx = gx[None] - cx[:, None, None]
        dy = gy[None] - cy[:, None, None]
        c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        qx = (c * dx + s * dy) / rad
        qy = (-s * dx + c * dy) / rad
        dist = torch.empty_like(qx)
        for shape, sdf in enumerate(_SPRITE_SDFS):
            m = f[:, 0] == shape
            if m.any():
                dist[m] = sdf(qx[m], qy[m])
        return (0.5 - dist * rad * S).clamp(0.0, 1.0)


class Dots(ProceduralDataset):
    """Two discs of different radii (big: 0.14, small: 0.08 of the image side), each at its own
    position: factors x1, y1, x2, y2 with 16 levels each. Overlaps are allowed (pixelwise max).
    Images are (N, 1, S, S) float32 in [0, 1]."""

    name = "dots"
    factor_names = ("x1", "y1", "x2", "y2")
    factor_sizes = (16, 16, 16, 16)
    categorical = (False, False, False, False)
    radii = (0.14, 0.08)
    margin = 0.16

    def _render_chunk(self, f: Tensor) -> Tensor:
        S = self.size
        gx, gy = self._grid()
        span = 1 - 2 * self.margin
        pos = self.margin + span * f.float() / (torch.tensor(self.factor_sizes, dtype=torch.float32) - 1)
        out = torch.zeros(f.shape[0], S, S)
        for i, r in enumerate(self.radii):
            cx, cy = pos[:, 2 * i, None, None], pos[:, 2 * i + 1, None, None]
            dist = torch.sqrt((gx[None] - cx) ** 2 + (gy[None] - cy) ** 2) - r
            out = torch.maximum(out, (0.5 - dist * S).clamp(0.0, 1.0))
        return out


class Spot(ProceduralDataset):
    """One disc whose four ordinal factors change the image by clearly different amounts: x (16
    levels), y (16), radius (8) and brightness (8).

    The factors are built to have distinct output sensitivities (the image change per unit of
    factor value in [0, 1]), so that a method reading the generator's Jacobian spectrum can tell
    them apart: the centre's x range (0.56 of the side) is about twice its y range (0.28), the
    radius runs from 0.07 to 0.16 of the side and the brightness from 0.35 to 1. `sensitivities`
    measures them. Images are (N, 1, S, S) float32 in [0, 1] (grey disc on black).
    """

    name = "spot"
    factor_names = ("x", "y", "radius", "brightness")
    factor_sizes = (16, 16, 8, 8)
    categorical = (False, False, False, False)
    x_range = (0.22, 0.78)
    y_range = (0.36, 0.64)
    radius_range = (0.07, 0.16)
    brightness_range = (0.35, 1.0)

    def _render_chunk(self, f: Tensor) -> Tensor:
        S = self.size
        gx, gy = self._grid()
        v = f.float() / (torch.tensor(self.factor_sizes, dtype=torch.float32) - 1)

        def lerp(rng, t):
            return (rng[0] + (rng[1] - rng[0]) * t)[:, None, None]

        cx, cy = lerp(self.x_range, v[:, 0]), lerp(self.y_range, v[:, 1])
        r, b = lerp(self.radius_range, v[:, 2]), lerp(self.brightness_range, v[:, 3])
        dist = torch.sqrt((gx[None] - cx) ** 2 + (gy[None] - cy) ** 2) - r
        return b * (0.5 - dist * S).clamp(0.0, 1.0)

    def sensitivities(self, n: int = 256, seed: int = 0) -> Tensor:
        """Mean L2 image change per unit of each factor's value in [0, 1], (F,) float32: the
        rendered difference between neighbouring levels, times (levels - 1)."""
        gen = torch.Generator().manual_seed(seed)
        base = self.sample_factors(n, generator=gen)
        out = []
        for j, levels in enumerate(self.factor_sizes):
            lo = base.clone()
            lo[:, j] = lo[:, j].clamp_max(levels - 2)
            hi = lo.clone()
            hi[:, j] += 1
            diff = (self.render(hi) - self.render(lo)).flatten(1).norm(dim=1)
            out.append(float(diff.mean()) * (levels - 1))
        return torch.tensor(out)


DATASETS: dict[str, type[ProceduralDataset]] = {"sprites": Sprites, "dots": Dots, "spot": Spot}


def make_dataset(name: str, n: int = 10000, *, size: int = 32, seed: int = 0) -> ProceduralDataset:
    """Build a procedural dataset by name ("sprites", "dots" or "spot")."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](n, size=size, seed=seed)
