"""Generators used by the benchmarks (no batch coupling, tanh output): the library's DCGAN
generator with optional latent scales, and a small StyleGAN2-like generator."""

from __future__ import annotations

import torch
from torch import nn

from spectral_ops.lab.models import Generator


class ScaledLatent(nn.Module):
    """z -> G(z * latent_scales): per-axis input scales give J^T J a clear spectral gap, so
    accuracy can be compared."""

    def __init__(self, G: nn.Module, latent_scales: torch.Tensor):
        super().__init__()
        self.G = G
        self.register_buffer("latent_scales", latent_scales)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z * self.latent_scales)


def DCGAN(
    latent_dim: int = 64, size: int = 32, width: int = 32, channels: int = 1, latent_scales: torch.Tensor | None = None
) -> nn.Module:
    """An untrained DCGAN (N, latent_dim) -> (N, channels, size, size) in [-1, 1], size in {16, 32, 64}:
    spectral_ops.lab.models.Generator with norm="none" and a tanh output, wrapped in ScaledLatent
    when `latent_scales` ([latent_dim]) is given."""
    G = Generator(latent_dim, size=size, width=width, channels=channels, norm="none", output="tanh")
    return G if latent_scales is None else ScaledLatent(G, latent_scales)


def gapped_scales(d: int, n_gapped: int = 8, ratio: float = 0.75, floor: float = 0.05) -> torch.Tensor:
    """[d] scales: a geometric decay on the first axes, then a small flat floor."""
    s = torch.full((d,), floor)
    s[:n_gapped] = ratio ** torch.arange(min(n_gapped, d), dtype=torch.float32)
    return s


# ---------------------------------------------------------------- a small StyleGAN2-like generator
def _lrelu(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's bias-free activation: leaky ReLU(0.2) with gain sqrt(2)."""
    return nn.functional.leaky_relu(x, 0.2) * 2**0.5


class PixelNorm(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weight scaled at run time), optional lrelu."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = lr_mul / in_dim**0.5, lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return _lrelu(x) if self.activate else x


class MappingNetwork(nn.Module):
    """z -> w: optional pixel norm of z, then `layers` equalized linear + lrelu layers (lr_mul 0.01)."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int = 4, pixel_norm: bool = True, lr_mul: float = 0.01):
        super().__init__()
        dims = [latent_dim] + [w_dim] * layers
        self.norm = PixelNorm() if pixel_norm else nn.Identity()
        self.net = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in zip(dims, dims[1:])])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(z))


_BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0])


def _blur_kernel(channels: int, gain: float = 1.0) -> torch.Tensor:
    k = torch.outer(_BLUR, _BLUR)
    return (k / k.sum() * gain).expand(channels, 1, 4, 4).contiguous()


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: per-sample weights w_ij * s_i (s = affine(w)), demodulated
    by rsqrt(sum w'^2), applied as ONE grouped convolution with the batch folded into the groups.
    up=True: a grouped stride-2 transposed convolution followed by a [1,3,3,1] blur (2x upsampling).

    fused=False computes the same function as StyleGAN2-ADA does in training: scale the input
    channels by s, convolve with the shared weight, scale the output channels by the demodulation
    coefficients (computed from s^2 and the squared weight, without per-sample weight tensors)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        w_dim: int,
        demodulate: bool = True,
        up: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel, self.demodulate, self.up = in_ch, out_ch, kernel, demodulate, up
        self.fused = fused
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1 / (in_ch * kernel**2) ** 0.5
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        if up:
            self.register_buffer("blur", _blur_kernel(out_ch, gain=4.0))  # up=2: gain factor**2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        s = self.affine(w)  # [N, in]
        if not self.fused:
            return self._unfused(x, s)
        weight = self.scale * self.weight * s[:, None, :, None, None]  # [N, out, in, k, k]
        if self.demodulate:
            d = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)  # [N, out]
            weight = weight * d[:, :, None, None, None]
        x = x.reshape(1, N * C, H, W)
        if self.up:
            weight = weight.transpose(1, 2).reshape(N * C, self.out_ch, self.kernel, self.kernel)
            x = nn.functional.conv_transpose2d(x, weight, stride=2, groups=N)  # 2H + 1
            x = x.reshape(N, self.out_ch, *x.shape[2:])
            return nn.functional.conv2d(x, self.blur, padding=1, groups=self.out_ch)  # blur -> 2H
        weight = weight.reshape(N * self.out_ch, C, self.kernel, self.kernel)
        x = nn.functional.conv2d(x, weight, padding=self.kernel // 2, groups=N)
        return x.reshape(N, self.out_ch, *x.shape[2:])

    def _unfused(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weight = self.scale * self.weight[0]  # [out, in, k, k], shared
        x = x * s[:, :, None, None]
        if self.up:
            x = nn.functional.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = nn.functional.conv2d(x, self.blur, padding=1, groups=self.out_ch)
        else:
            x = nn.functional.conv2d(x, weight, padding=self.kernel // 2)
        if self.demodulate:
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)  # [N, out]
            x = x * d[:, :, None, None]
        return x


class StyledLayer(nn.Module):
    """Modulated 3x3 conv + per-pixel noise (a fixed buffer: G(z) stays a function of z) + bias + lrelu."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: bool = False, fused: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, up=up, fused=fused)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))  # noise_mode="const"
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w) + self.noise_strength * self.noise_const
        return _lrelu(x + self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation, + bias."""

    def __init__(self, in_ch: int, channels: int, w_dim: int, fused: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, channels, 1, w_dim, demodulate=False, fused=fused)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias


class StyleGenerator(nn.Module):
    """A small StyleGAN2-like generator, (N, latent_dim) -> (N, channels, size, size), tanh output.

    mapping (pixel norm + `mapping_layers` lrelu layers, z -> w [N, w_dim]) -> learned constant
    4x4 input -> per resolution 4, 8, ..., size: [an upsampling modulated conv], a modulated conv,
    a toRGB, with the skip architecture (rgb = upsample(rgb) + toRGB(x)).  The same w feeds every
    layer (no style mixing).  `channels_at` maps a resolution to its feature channels.

    In training mode each forward moves the buffer `w_avg` towards the batch mean of w (beta =
    0.995), as StyleGAN2 tracks it for truncation; `truncation_psi` < 1 uses it in eval mode.
    `fused_modconv=False`: the same function without per-sample weights (see ModulatedConv2d).
    """

    def __init__(
        self,
        latent_dim: int = 64,
        size: int = 32,
        w_dim: int = 128,
        channels: int = 3,
        channels_at: dict[int, int] | None = None,
        mapping_layers: int = 4,
        pixel_norm: bool = True,
        w_avg_beta: float = 0.995,
        truncation_psi: float = 1.0,
        fused_modconv: bool = True,
    ):
        super().__init__()
        if size not in (8, 16, 32, 64):
            raise ValueError(f"size must be 8, 16, 32 or 64, got {size}")
        ch = {4: 64, 8: 64, 16: 32, 32: 16, 64: 8}
        ch.update(channels_at or {})
        self.latent_dim, self.size, self.w_dim, self.channels = latent_dim, size, w_dim, channels
        self.w_avg_beta, self.truncation_psi = w_avg_beta, truncation_psi
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers, pixel_norm)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.const = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        f = fused_modconv
        self.layers = nn.ModuleList([StyledLayer(ch[4], ch[4], w_dim, 4, fused=f)])
        self.to_rgbs = nn.ModuleList([ToRGB(ch[4], channels, w_dim, fused=f)])
        res = 8
        while res <= size:
            self.layers.append(StyledLayer(ch[res // 2], ch[res], w_dim, res, up=True, fused=f))
            self.layers.append(StyledLayer(ch[res], ch[res], w_dim, res, fused=f))
            self.to_rgbs.append(ToRGB(ch[res], channels, w_dim, fused=f))
            res *= 2
        self.register_buffer("rgb_up", _blur_kernel(channels, gain=4.0))

    def _upsample_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """upfirdn2d(up=2) with the [1,3,3,1] filter: zero-stuff, then blur (a depthwise transposed conv)."""
        return nn.functional.conv_transpose2d(rgb, self.rgb_up, stride=2, padding=1, groups=self.channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        elif self.truncation_psi != 1.0:
            w = self.w_avg.lerp(w, self.truncation_psi)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        x = self.layers[0](x, w)
        rgb = self.to_rgbs[0](x, w)
        for i, to_rgb in enumerate(self.to_rgbs[1:]):
            x = self.layers[1 + 2 * i](x, w)
            x = self.layers[2 + 2 * i](x, w)
            rgb = self._upsample_rgb(rgb) + to_rgb(x, w)
        return torch.tanh(rgb)


# ---------------------------------------------------------------- generators at their usual latent sizes
class BatchNormDCGAN(nn.Module):
    """The classic DCGAN generator, (N, nz) or (N, nz, 1, 1) -> (N, channels, size, size), tanh output.

    A stack of stride-2 transposed 4x4 convolutions, each followed by BatchNorm and ReLU: nz ->
    width * 2^(L-1) channels at 4x4 (a 4x4 transposed convolution from 1x1), halving the channels
    while doubling the side, then a transposed convolution to `channels` and tanh.  size in
    {16, 32, 64}.  Its BatchNorm layers couple the rows of a batch in training mode, so a Jacobian
    of one row needs their running statistics (batchnorm="eval" in the regularizer);
    `warm_statistics` fills those as a few training batches would.
    """

    def __init__(self, nz: int = 100, size: int = 32, width: int = 64, channels: int = 3):
        super().__init__()
        if size not in (16, 32, 64):
            raise ValueError(f"size must be 16, 32 or 64, got {size}")
        self.latent_dim = nz
        n_up = {16: 2, 32: 3, 64: 4}[size]  # 4x4 -> size in n_up doublings
        ch = width * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN's initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02)
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, nz] or [N, nz, 1, 1] -> [N, channels, size, size]."""
        return self.net(z.reshape(z.shape[0], -1, 1, 1))

    @torch.no_grad()
    def warm_statistics(self, batches: int = 20, batch_size: int = 64, seed: int = 0) -> "BatchNormDCGAN":
        """Fill the BatchNorm running statistics from `batches` training-mode forwards on N(0, I)
        latents (as the first steps of a run would); returns self, in training mode."""
        gen = torch.Generator().manual_seed(seed)
        self.train()
        for _ in range(batches):
            self(torch.randn(batch_size, self.latent_dim, generator=gen))
        return self


class MLPGenerator(nn.Module):
    """A WGAN-GP-style fully connected generator, (N, latent_dim) -> (N, channels, size, size):
    Linear-ReLU layers of `hidden` widths, then a Linear to channels*size*size and tanh (no
    normalisation layers: the rows never interact)."""

    def __init__(
        self, latent_dim: int = 100, size: int = 28, channels: int = 1, hidden: tuple[int, ...] = (256, 512, 1024)
    ):
        super().__init__()
        self.latent_dim, self.size, self.channels = latent_dim, size, channels
        dims = [latent_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(True)]
        layers += [nn.Linear(dims[-1], channels * size * size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, latent_dim] -> [N, channels, size, size]."""
        return self.net(z).reshape(z.shape[0], self.channels, self.size, self.size)
