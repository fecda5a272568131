"""`spectral-ops topk`: top-k Jacobian singular values of a small DCGAN-like generator, timed
against the explicit Jacobian (vmap(jacfwd)) + SVD, with the agreement between the two."""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from spectral_ops.lab.cli.errors import fail, first_line
from spectral_ops.lab.cli.options import add_device_option, device_from_args
from spectral_ops.lab.models import Generator
from spectral_ops.topk import jacobian_topk
from spectral_ops.validation import check_seed


def small_generator(latent_dim: int, size: int = 32) -> nn.Module:
    """An untrained DCGAN (N, latent_dim) -> (N, 1, size, size) in [-1, 1], size 16/32/64: the
    library's Generator with no normalisation, width 16 and a tanh output."""
    return Generator(latent_dim, size=size, width=16, norm="none", output="tanh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="latent codes in the batch (default 8)")
    parser.add_argument("--latent-dim", type=int, default=128, help="latent dimension d (default 128)")
    parser.add_argument("--size", type=int, default=32, choices=(16, 32, 64), help="output image size")
    parser.add_argument("-k", type=int, default=4, help="singular vectors per code (default 4)")
    parser.add_argument("--iters", type=int, default=50, help="maximum power iterations (default 50)")
    parser.add_argument("--tol", type=float, default=1e-4, help="residual tolerance, >= 0 (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator and the codes")
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    for name in ("batch", "latent_dim", "k", "iters"):
        if getattr(args, name) < 1:
            return fail(
                "topk",
                f"{'-k' if name == 'k' else '--' + name.replace('_', '-')} must be >= 1, got {getattr(args, name)}",
            )
    if args.k > args.latent_dim:
        return fail("topk", f"-k ({args.k}) must not exceed --latent-dim ({args.latent_dim})")
    if not (math.isfinite(args.tol) and args.tol >= 0):
        return fail("topk", f"--tol must be a finite number >= 0, got {args.tol}")
    try:
        check_seed(args.seed, allow_none=False, name="--seed")
    except ValueError as exc:
        return fail("topk", str(exc))
    try:
        return _run(args)
    except (ValueError, TypeError) as exc:  # anything the arguments above let through
        return fail("topk", first_line(exc))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a timer stops when the queued GPU work has finished


def _run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    torch.manual_seed(args.seed)
    G = small_generator(args.latent_dim, args.size).to(device)
    z = torch.randn(args.batch, args.latent_dim).to(device)  # drawn on the CPU: the same codes on every device

    t0 = time.perf_counter()
    top = jacobian_topk(G, z, args.k, iters=args.iters, tol=args.tol, method="power")
    _sync(device)
    t_power = time.perf_counter() - t0

    t0 = time.perf_counter()
    J = torch.func.vmap(torch.func.jacfwd(lambda x: G(x[None]).reshape(-1)))(z)
    _, S, Vh = torch.linalg.svd(J.detach(), full_matrices=False)
    _sync(device)
    t_dense = time.perf_counter() - t0

    cos = (top.vectors * Vh[:, : args.k]).sum(-1).abs()
    rel = ((top.values - S[:, : args.k]) / S[:, : args.k]).abs()
    print(
        f"generator: untrained DCGAN, d={args.latent_dim}, output 1x{args.size}x{args.size}, batch {args.batch}, "
        f"on {device.type}"
    )
    print(
        f"power iteration ({top.jvp}): {top.iterations} iterations, {t_power:.3f} s; "
        f"full Jacobian + SVD: {t_dense:.3f} s ({t_dense / t_power:.1f}x slower)"
    )
    print("top-k singular values of the first codes (power | exact):")
    for b in range(min(4, args.batch)):
        ours = " ".join(f"{v:8.4f}" for v in top.values[b].tolist())
        exact = " ".join(f"{v:8.4f}" for v in S[b, : args.k].tolist())
        print(f"  z[{b}]: {ours} | {exact}")
    print(
        f"max relative value error {float(rel.max()):.2e}; min |cos| to exact vectors {float(cos.min()):.4f} "
        f"(an untrained generator has a flat spectrum, so individual vectors converge slowly); "
        f"converged {int(top.converged.sum())}/{top.converged.numel()}"
    )
    return 0
