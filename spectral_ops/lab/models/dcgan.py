"""Small DCGAN-style models sized for CPU training, and the DCGAN generator that the benchmarks
and the `topk` command build (`norm="none"`, `output="tanh"`, a chosen width; the tests build the
same network, torch only, as `spectral_ops.testing.families.DCGAN`, checked equal by
tests/test_families.py).

The generator has no batch-coupled layers (no BatchNorm): every row of the batch is mapped
independently, which per-sample Jacobians, folding k into the batch and the spectral regularizer
require (`spectral_ops.guards.batch_policy`). Its optional normalisation is per sample ("pixel": PixelNorm over
channels at each position, "layer": GroupNorm with one group) or absent ("none").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Generator", "Discriminator", "PixelNorm"]

NORMS = ("pixel", "layer", "none")
_OUTPUTS = ("sigmoid", "tanh", "none")
LATENT_MAPS = ("none", "uniform")
_G_SIZES = (8, 16, 32, 64)
_D_SIZES = (32, 64)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit RMS over channels: (N, C, H, W) -> same."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "pixel":
        return PixelNorm()
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _check_common(size: int, channels: int, width: int, sizes: tuple[int, ...]) -> int:
    if size not in sizes:
        names = ", ".join(map(str, sizes[:-1])) + f" or {sizes[-1]}"
        raise ValueError(f"size must be {names}, got {size!r}")
    for name, v in (("channels", channels), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(math.log2(size // 4))  # number of x2 upsamplings from 4x4


class Generator(nn.Module):
    """z (N, latent_dim) -> images (N, channels, size, size); size 8, 16, 32 or 64.

    Layout: Linear(latent_dim -> c0 * 4*4) -> norm -> LeakyReLU(0.2), then log2(size/4)
    ConvTranspose2d (kernel 4, stride 2, padding 1) blocks halving the channels (never below 8),
    with norm + LeakyReLU(0.2) after all but the last, which maps to `channels`; c0 = width *
    2**(log2(size/4) - 1), so the last hidden block has `width` channels.  `output`: "sigmoid"
    (images in [0, 1], what the trainer uses), "tanh" (in [-1, 1]) or "none" (the raw last layer).
    `latent_map`: "none", or "uniform": the first op maps z ~ N(0, I) to u = sqrt(3) erf(z / sqrt(2)),
    uniform on [-sqrt(3), sqrt(3)]^d (unit variance), so the layers see a prior that is not
    rotation-invariant (a rotation of the cube is another distribution) and a generator that moves
    one uniform factor per coordinate can be affine in u, with a sensitivity that does not change
    across z.  The map is elementwise, so J^T J is diagonal in z exactly when it is in u.

    Parameters are created (and drawn from torch's RNG) in layer order: fc, then the transposed
    convolutions; the norms draw nothing.  With norm="none" and output="tanh" this is the plain
    untrained DCGAN of the tests and benchmarks (a flat Jacobian spectrum, the case krylov is for).
    With latent_dim=10, width=32, size=32 it has about 0.19 M parameters.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        *,
        size: int = 32,
        channels: int = 1,
        width: int = 32,
        norm: str = "pixel",
        output: str = "sigmoid",
        latent_map: str = "none",
    ):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        if latent_map not in LATENT_MAPS:
            raise ValueError(f"latent_map must be one of {LATENT_MAPS}, got {latent_map!r}")
        n_up = _check_common(size, channels, width, _G_SIZES)
        self.latent_dim, self.size, self.channels, self.output = latent_dim, size, channels, output
        self.latent_map = latent_map
        c0 = width * 2 ** (n_up - 1)
        self.c0 = c0
        self.fc = nn.Linear(latent_dim, c0 * 16)
        self.fc_norm = _norm(norm, c0)
        layers: list[nn.Module] = []
        c = c0
        for i in range(n_up):
            last = i == n_up - 1
            c_out = channels if last else max(c // 2, 8)
            layers.append(nn.ConvTranspose2d(c, c_out, 4, 2, 1))
            if not last:
                layers += [_norm(norm, c_out), nn.LeakyReLU(0.2)]
            c = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}), got {tuple(z.shape)}")
        if self.latent_map == "uniform":
            z = math.sqrt(3.0) * torch.erf(z * math.sqrt(0.5))
        h = self.fc(z).view(z.shape[0], self.c0, 4, 4)
        h = nn.functional.leaky_relu(self.fc_norm(h), 0.2)
        h = self.net(h)
        if self.output == "sigmoid":
            return torch.sigmoid(h)
        return torch.tanh(h) if self.output == "tanh" else h


class Discriminator(nn.Module):
    """images (N, channels, size, size) in [0, 1] -> logits (N,).

    log2(size/4) Conv2d (kernel 4, stride 2) + LeakyReLU blocks doubling the channels from
    `width/2`, then a Linear on the 4x4 map. No normalisation layers (use R1 for stability).
    """

    def __init__(self, *, size: int = 32, channels: int = 1, width: int = 32):
        super().__init__()
        n_down = _check_common(size, channels, width, _D_SIZES)
        self.size, self.channels = size, channels
        layers: list[nn.Module] = []
        c_in, c = channels, max(width // 2, 8)
        for _ in range(n_down):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, c = c, c * 2
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(c_in * 16, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.size, self.size):
            raise ValueError(f"images must be (N, {self.channels}, {self.size}, {self.size}), got {tuple(x.shape)}")
        h = self.net(x * 2 - 1)
        return self.out(h.flatten(1)).squeeze(1)
