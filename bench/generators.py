"""DCGAN-like generators used by the benchmarks (no batch coupling, tanh output)."""
from __future__ import annotations

import torch
from torch import nn


class DCGAN(nn.Module):
    """(N, latent_dim) -> (N, channels, size, size); size in {16, 32, 64}."""

    def __init__(self, latent_dim: int = 64, size: int = 32, width: int = 32, channels: int = 1,
                 latent_scales: torch.Tensor | None = None):
        super().__init__()
        ups = {16: 2, 32: 3, 64: 4}[size]
        c = width * 2 ** (ups - 1)
        self.stem = nn.Sequential(nn.Linear(latent_dim, c * 16), nn.LeakyReLU(0.2))
        layers: list[nn.Module] = []
        for i in range(ups):
            out = channels if i == ups - 1 else c // 2
            layers += [nn.ConvTranspose2d(c, out, 4, 2, 1)]
            layers += [nn.Tanh()] if i == ups - 1 else [nn.LeakyReLU(0.2)]
            c = out
        self.body = nn.Sequential(*layers)
        self.top_channels = width * 2 ** (ups - 1)
        # Optional per-axis input scales: a clear spectral gap, so accuracy can be compared.
        self.register_buffer("latent_scales", latent_scales if latent_scales is not None else torch.ones(latent_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z * self.latent_scales)
        return self.body(h.reshape(z.shape[0], self.top_channels, 4, 4))


def gapped_scales(d: int, n_gapped: int = 8, ratio: float = 0.75, floor: float = 0.05) -> torch.Tensor:
    """[d] scales: a geometric decay on the first axes, then a small flat floor."""
    s = torch.full((d,), floor)
    s[:n_gapped] = ratio ** torch.arange(min(n_gapped, d), dtype=torch.float32)
    return s
