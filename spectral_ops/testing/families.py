"""Small generator families used as test subjects, with explicit-Jacobian oracles (torch only).

Each family maps (N, d) -> (N, ...) with no coupling between rows.  `gapped` variants scale the
latent axes by a geometric sequence so J^T J has a clear spectral gap; the untrained DCGAN is
the flat case (sigma_2 / sigma_1 near 1) that krylov is for.  `StyleLike` and `DCGAN4D` are
generators shaped as public trainers write them (a tracked `w_avg` buffer and noise inputs; 4-D
latents and BatchNorm).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def latent_scales(d: int, ratio: float = 0.7, dtype=torch.float64) -> torch.Tensor:
    """[d] geometric scales 1, ratio, ratio^2, ... (used to create a spectral gap)."""
    return ratio ** torch.arange(d, dtype=dtype)


class ScaledInput(nn.Module):
    """z -> net(z * scales): multiplies J's columns by `scales` to create a spectral gap."""

    scales: torch.Tensor

    def __init__(self, net: nn.Module, scales: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("scales", scales)

    def forward(self, z):
        return self.net(z * self.scales.to(z.dtype))


def mlp(d: int = 8, m: int = 40, hidden: int = 32, act=nn.Tanh) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, m))


class DCGAN(nn.Module):
    """A plain untrained DCGAN generator: z [N, d] -> [N, out_channels, size, size], tanh output.

    Linear(d -> c0 * 4 * 4) -> LeakyReLU(0.2), then log2(size / 4) ConvTranspose2d (kernel 4,
    stride 2, padding 1) blocks halving the channels (never below 8), with LeakyReLU(0.2) after
    all but the last, which maps to `out_channels`; c0 = channels * 2**(log2(size / 4) - 1), so the
    last hidden block has `channels` channels.  No normalisation: every row is mapped on its own.

    Parameters are drawn from torch's RNG in layer order (fc, then the transposed convolutions):
    the same draws and the same function as the application's DCGAN generator
    (`spectral_ops.lab.models.Generator` with norm="none", output="tanh", width=channels), which
    tests/test_families.py checks; written here with torch alone, as the library never imports
    the application.
    """

    def __init__(self, d: int = 16, *, size: int = 16, channels: int = 16, out_channels: int = 1):
        super().__init__()
        if size not in (8, 16, 32, 64):
            raise ValueError(f"size must be 8, 16, 32 or 64, got {size!r}")
        n_up = int(math.log2(size // 4))
        self.latent_dim = d
        self.c0 = channels * 2 ** (n_up - 1)
        self.fc = nn.Linear(d, self.c0 * 16)
        layers: list[nn.Module] = []
        c = self.c0
        for i in range(n_up):
            last = i == n_up - 1
            c_out = out_channels if last else max(c // 2, 8)
            layers.append(nn.ConvTranspose2d(c, c_out, 4, 2, 1))
            if not last:
                layers.append(nn.LeakyReLU(0.2))
            c = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}), got {tuple(z.shape)}")
        h = nn.functional.leaky_relu(self.fc(z).view(z.shape[0], self.c0, 4, 4), 0.2)
        return torch.tanh(self.net(h))


def dcgan(d: int = 16, channels: int = 16, out_channels: int = 1) -> nn.Module:
    """A small untrained DCGAN: (N, d) -> (N, out_channels, 16, 16), tanh output, with `channels`
    channels in its last hidden block (`DCGAN`)."""
    return DCGAN(d, size=16, channels=channels, out_channels=out_channels)


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


class StyleLike(nn.Module):
    """A small style-based generator: a mapping MLP z -> w whose mean is tracked in a `w_avg`
    buffer in training mode (as StyleGAN2 does), a learned constant, a modulated (per-sample,
    demodulated) 3x3 convolution as a grouped convolution, and per-pixel noise inputs.

    forward(z, noise_mode="random"): [N, d] -> [N, 1, 8, 8]; noise_mode "random" draws new noise
    on every call (StyleGAN2's default in training), "const" uses the fixed `noise_const` buffer,
    "none" adds none.
    """

    w_avg: torch.Tensor
    noise_const: torch.Tensor

    def __init__(self, d: int = 8, w_dim: int = 12, channels: int = 4):
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(d, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.const = nn.Parameter(torch.randn(channels, 8, 8))
        self.affine = nn.Linear(w_dim, channels)
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) / 3)
        self.to_rgb = nn.Conv2d(channels, 1, 1)
        self.noise_strength = nn.Parameter(torch.full((), 0.5))
        self.register_buffer("noise_const", torch.randn(1, 1, 8, 8))

    def forward(self, z: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        w = self.mapping(z)
        if self.training:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, 0.995))
        N, C = w.shape[0], self.const.shape[0]
        s = self.affine(w) + 1  # [N, C] styles
        weight = self.weight[None] * s[:, None, :, None, None]  # [N, C, C, 3, 3]
        weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        x = self.const[None].expand(N, -1, -1, -1).reshape(1, N * C, 8, 8)
        x = nn.functional.conv2d(x, weight.reshape(N * C, C, 3, 3), padding=1, groups=N).reshape(N, C, 8, 8)
        if noise_mode == "random":
            x = x + self.noise_strength * torch.randn(N, 1, 8, 8, dtype=x.dtype, device=x.device)
        elif noise_mode == "const":
            x = x + self.noise_strength * self.noise_const.to(x.dtype)
        return torch.tanh(self.to_rgb(nn.functional.leaky_relu(x, 0.2)))


class DCGAN4D(nn.Module):
    """A DCGAN generator as public trainers write it: z [N, nz, 1, 1] -> [N, 1, 8, 8], with
    BatchNorm2d between the transposed convolutions.

    Deliberately not built like `DCGAN` (or the application's generator): it is the test subject
    for what those avoid by design, the interface of public trainers' checkpoints: 4-D
    latents (which every entry point must accept and reshape) and a batch-coupled BatchNorm
    (refused in training mode unless batchnorm="eval"; eval mode uses the running statistics)."""

    def __init__(self, nz: int = 6, ngf: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, 2 * ngf, 4, 1, 0),
            nn.BatchNorm2d(2 * ngf),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * ngf, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4:
            raise ValueError(f"DCGAN4D takes z [N, nz, 1, 1], got {tuple(z.shape)}")
        return self.net(z)
