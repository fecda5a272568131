"""The trainer's losses: one D update (non-saturating loss, lazy R1 on the real images), one G
update (non-saturating loss plus the regularizer on its own lazy schedule), and how that
regularizer (`--reg`: spectral or a peer) is built from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from spectral_ops.lab.train.config import TrainConfig

if TYPE_CHECKING:
    from spectral_ops.lab.train.loop import RunState


class LocalAndGlobal(nn.Module):
    """The spectral regularizer plus `weight` times the global term
    (`spectral_ops.directions.global_alignment_penalty`) on the same lazy schedule: computed on
    the calls the local one computes, on as many rows as it regularizes (`regularized_rows`; the
    first rows of z, while the local term draws its own), scaled by `every` as the local value
    is; a zero on the calls it skips."""

    def __init__(self, local: nn.Module, weight: float, batch_fraction: float):
        super().__init__()
        self.local, self.weight, self.batch_fraction = local, weight, batch_fraction

    @property
    def will_compute(self) -> bool:
        return self.local.will_compute

    @property
    def last_worst_residual(self):
        return self.local.last_worst_residual

    @property
    def last_active(self):
        return self.local.last_active

    def forward(self, G, z: torch.Tensor) -> torch.Tensor:
        computes = self.local.will_compute
        value = self.local(G, z)
        if not computes:
            return value
        from spectral_ops.directions import global_alignment_penalty
        from spectral_ops.regularizer import regularized_rows

        n = regularized_rows(self.batch_fraction, z.shape[0])
        return value + self.weight * self.local.every * global_alignment_penalty(G, z[:n])


def build_regularizer(config: TrainConfig) -> nn.Module | None:
    """The regularizer module for config.reg (None for "none"), every one on the lazy schedule
    of config.reg_config.every (spectral_ops.lazy)."""
    if config.reg == "none":
        return None
    from spectral_ops import baselines
    from spectral_ops.lazy import LazyFunction
    from spectral_ops.regularizer import SpectralRegularizer

    every = config.reg_config.every
    if config.reg == "spectral":
        local = SpectralRegularizer(config.latent_dim, config.reg_config.replace(seed=config.seed))
        if config.reg_global == 0:
            return local
        return LocalAndGlobal(local, config.reg_global, config.reg_config.batch_fraction)
    if config.reg == "path_length":
        return baselines.PathLengthRegularizer(every=every)
    peers = {"hessian": baselines.hessian_penalty, "orojar": baselines.orojar, "jacobian_l1": baselines.jacobian_l1}
    return LazyFunction(peers[config.reg], every)


def _discriminator_step(run: RunState, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One D update on B real and B generated images (each (B, 1, size, size)), with the R1
    penalty on the reals every r1_every steps (scaled by r1_every): (loss_D, r1, whether R1 ran)."""
    config, B = run.config, run.batch
    idx = torch.randint(0, run.data.shape[0], (B,), generator=run.sampler).to(run.device)
    z = torch.randn(B, config.latent_dim, generator=run.sampler).to(run.device)
    real = run.data[idx]
    with torch.no_grad():
        fake = run.G(z)
    do_r1 = config.r1_gamma > 0 and step % config.r1_every == 0
    if do_r1:
        real = real.detach().requires_grad_(True)
    logits = run.D_run(torch.cat([real, fake]))
    l_real, l_fake = logits[:B], logits[B:]
    loss_D = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
    r1 = torch.zeros((), device=run.device)
    if do_r1:
        (g,) = torch.autograd.grad(l_real.sum(), real, create_graph=True)
        r1 = g.pow(2).flatten(1).sum(1).mean()
        loss_D = loss_D + 0.5 * config.r1_gamma * config.r1_every * r1
    run.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    run.opt_D.step()
    return loss_D, r1, do_r1


def _generator_step(run: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """One G update on B latents (B, latent_dim): the non-saturating loss plus reg_weight times
    the regularizer (on its own lazy schedule): (adversarial loss, regularizer value)."""
    config = run.config
    z = torch.randn(run.batch, config.latent_dim, generator=run.sampler).to(run.device)
    run.D.requires_grad_(False)
    fake = run.G_run(z)
    loss_adv = F.softplus(-run.D(fake)).mean()
    loss_G = loss_adv
    reg_val = torch.zeros((), device=run.device)
    if run.reg is not None and config.reg_weight > 0:
        if bool(torch.isfinite(fake.detach()).all()):
            reg_val = run.reg(run.G_run, z)
        else:  # a diverged G: the regularizers refuse its G(z) (ValueError); reported as divergence, exit 1
            reg_val = torch.full((), float("nan"), device=run.device)
        loss_G = loss_G + config.reg_weight * reg_val
    run.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    run.opt_G.step()
    run.D.requires_grad_(True)
    return loss_adv, reg_val
