"""Small generator families used as test subjects, with explicit-Jacobian oracles.

Each family maps (N, d) -> (N, ...) with no coupling between rows.  `gapped` variants scale the
latent axes by a geometric sequence so J^T J has a clear spectral gap; the untrained DCGAN is
the flat case of DESIGN.md section 2.
"""
from __future__ import annotations

import torch
from torch import nn


def latent_scales(d: int, ratio: float = 0.7, dtype=torch.float64) -> torch.Tensor:
    """[d] geometric scales 1, ratio, ratio^2, ... (used to create a spectral gap)."""
    return ratio ** torch.arange(d, dtype=dtype)


class ScaledInput(nn.Module):
    """z -> net(z * scales): multiplies J's columns by `scales` to create a spectral gap."""

    def __init__(self, net: nn.Module, scales: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("scales", scales)

    def forward(self, z):
        return self.net(z * self.scales.to(z.dtype))


def mlp(d: int = 8, m: int = 40, hidden: int = 32, act=nn.Tanh) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, m))


def dcgan(d: int = 16, channels: int = 16, out_channels: int = 1) -> nn.Module:
    """A small DCGAN-like generator: (N, d) -> (N, out_channels, 16, 16), tanh output."""
    c = channels
    return nn.Sequential(
        nn.Linear(d, 2 * c * 4 * 4), nn.LeakyReLU(0.2), nn.Unflatten(1, (2 * c, 4, 4)),
        nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(c, out_channels, 4, 2, 1), nn.Tanh(),
    )


def sigmoid_image_mlp(d: int = 8) -> nn.Module:
    """MLP with sigmoid output shaped as images: (N, d) -> (N, 2, 3, 5)."""
    return nn.Sequential(nn.Linear(d, 24), nn.SiLU(), nn.Linear(24, 30), nn.Sigmoid(), nn.Unflatten(1, (2, 3, 5)))


def plain_function(d: int = 8, m: int = 30, seed: int = 0, dtype=torch.float64):
    """A plain (non-Module) generator: z -> sin(z A) * exp(-z B / 4), with gapped columns."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, m, generator=g, dtype=dtype) * latent_scales(d, 0.6, dtype)[:, None]
    Bm = torch.randn(d, m, generator=g, dtype=dtype) * 0.1

    def G(z):
        return torch.sin(z @ A.to(z.dtype)) * torch.exp(-(z @ Bm.to(z.dtype)) / 4)

    return G


def families(d: int = 8, seed: int = 0):
    """name -> gapped float64 generator (four families, one of them conv-transpose)."""
    torch.manual_seed(seed)
    scales = latent_scales(d)
    return {
        "mlp_tanh": ScaledInput(mlp(d), scales).double(),
        "dcgan_convtranspose": ScaledInput(dcgan(d), scales).double(),
        "sigmoid_image_mlp": ScaledInput(sigmoid_image_mlp(d), scales).double(),
        "plain_function": plain_function(d, seed=seed),
    }


def explicit_jacobian(G, z: torch.Tensor) -> torch.Tensor:
    """[B, m, d] per-sample Jacobians with torch.func.jacrev (the oracle)."""
    return torch.func.vmap(torch.func.jacrev(lambda x: G(x[None]).reshape(-1)))(z)


def oracle_svd(G, z: torch.Tensor):
    """(S [B, min(m,d)], Vh [B, min(m,d), d]) of the explicit Jacobian."""
    _, S, Vh = torch.linalg.svd(explicit_jacobian(G, z), full_matrices=False)
    return S, Vh
