"""Three codes of one disc's four factors that generate the same images with the same
distribution, only one of them factorised: a known answer for whether a loss can tell them apart
(torch only).

A disc on an S x S image has factors x, y, radius and brightness, each uniform on [0, 1] and
independent (the geometry of the lab's `spot` dataset, drawn with a smooth edge so that every
derivative exists). A generator maps a Gaussian latent z [N, d] (d >= 4; latents 4.. are ignored)
to factor values u [N, 4] and renders them:

- ``"factorized"``: u_i = Phi(z_i) for x, y, radius, brightness on z_0, z_1, z_2, z_3;
- ``"rotated"``: the factorized code after a rotation by `angle` of the (z_0, z_2) plane (x and
  radius each spread over two latents; a Gaussian is rotation-invariant, so the distribution is
  unchanged);
- ``"polar"``: in the (z_0, z_2) plane, radius = 1 - exp(-rho^2 / 2) of the norm rho and
  x = |theta| / pi of the angle theta. A 2D Gaussian's norm and angle are independent, rho^2 / 2
  is exponential and theta uniform, so x and radius are again independent and uniform: the same
  distribution of images, with x and radius carried by both latents. It is the code the GANs of
  the experiment learn (docs/experiment.md), and the conformal maps of the independent-mechanism
  line of work are its kind: its Jacobian columns are orthogonal wherever the two factors'
  sensitivities in the plane agree.

`disc_code(kind, d)` returns the generator: (N, d) -> (N, 1, S, S) in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

CODES = ("factorized", "rotated", "polar")
X_RANGE, Y_RANGE, RADIUS_RANGE, BRIGHTNESS_RANGE = (0.22, 0.78), (0.36, 0.64), (0.07, 0.16), (0.35, 1.0)


def _normal_cdf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def _lerp(bounds: tuple[float, float], t: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * t


class DiscCode(nn.Module):
    """One of `CODES` (module docstring): z [N, d] -> images [N, 1, size, size]."""

    def __init__(self, kind: str, d: int = 4, *, size: int = 32, angle: float = math.pi / 4):
        super().__init__()
        if kind not in CODES:
            raise ValueError(f"kind must be one of {CODES}, got {kind!r}")
        if not isinstance(d, int) or d < 4:
            raise ValueError(f"d must be an int >= 4 (four factors), got {d!r}")
        self.kind, self.latent_dim, self.size, self.angle = kind, d, size, angle

    def factors(self, z: torch.Tensor) -> torch.Tensor:
        """[N, 4] factor values in [0, 1] (x, y, radius, brightness) of the latents z [N, d]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be [N, {self.latent_dim}], got {tuple(z.shape)}")
        a, b = z[:, 0], z[:, 2]
        if self.kind == "rotated":
            c, s = math.cos(self.angle), math.sin(self.angle)
            a, b = c * a - s * b, s * a + c * b
        if self.kind == "polar":
            rho_sq = a * a + b * b
            x = torch.atan2(b, a).abs() / math.pi
            radius = 1 - torch.exp(-rho_sq / 2)
        else:
            x, radius = _normal_cdf(a), _normal_cdf(b)
        return torch.stack([x, _normal_cdf(z[:, 1]), radius, _normal_cdf(z[:, 3])], dim=1)

    def render(self, u: torch.Tensor) -> torch.Tensor:
        """Images [N, 1, S, S] of factor values u [N, 4]: a disc with a smooth one-pixel edge."""
        S = self.size
        grid = (torch.arange(S, dtype=u.dtype, device=u.device) + 0.5) / S
        gy, gx = torch.meshgrid(grid, grid, indexing="ij")
        cx, cy = _lerp(X_RANGE, u[:, 0])[:, None, None], _lerp(Y_RANGE, u[:, 1])[:, None, None]
        r, bright = _lerp(RADIUS_RANGE, u[:, 2])[:, None, None], _lerp(BRIGHTNESS_RANGE, u[:, 3])[:, None, None]
        distance = torch.sqrt((gx - cx) ** 2 + (gy - cy) ** 2) - r  # signed distance to the edge
        return (bright * torch.sigmoid(-4 * S * distance))[:, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(self.factors(z))


def disc_code(kind: str, d: int = 4, *, size: int = 32, angle: float = math.pi / 4) -> DiscCode:
    """The generator of one code (module docstring)."""
    return DiscCode(kind, d, size=size, angle=angle)
