"""global_directions against LowRankGAN's way.  Run:  BENCH_THREADS=1 pytest bench/bench_directions.py -s

Writes bench/results/directions.md/json.  On the same N latents, the top-k eigenvectors of the
average metric E_z[J^T J] two ways:

  - LowRankGAN's way: every sample's full Jacobian (vmap of jacfwd, d tangents per sample, where
    d <= m, else vmap of jacrev, m cotangents), J^T J summed in float64, then eigh;
  - spectral_ops.global_directions: matrix-free, streaming Lanczos on the averaged operator (one vector per pass)
    (its time includes the Hutchinson trace with the default 8 probes per sample).

On a DCGAN-like generator, untrained (a flat spectrum) and with its first 32 latent axes scaled
by 0.85^i (gapped), at d=128 and d=512, 16x16 and 32x32 outputs.  Per direction: 1 - |cos| to the
eigh's eigenvector, and its relative gap min(lam_{i-1} - lam_i, lam_i - lam_{i+1}) / lam_1 (a
direction is only defined where that gap is clear of the residual); the largest principal angle
between the two k-dimensional subspaces; value errors; the time ratio.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from bench_topk import full_jacobian, interleaved
from generators import DCGAN, gapped_scales
from ratios import RatioTable
from spectral_ops import global_directions

TABLE = RatioTable("directions")
N, K, TOL, BATCH = 64, 8, 1e-4, 16  # BATCH: samples per vmap'ed Jacobian in the LowRankGAN way
GAP = 0.01  # relative gap above which a direction counts as determined (residual tol 1e-4: |cos| >= 1 - 5e-5)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SPECTRA = {"flat": lambda d: None, "gapped": lambda d: gapped_scales(d, n_gapped=32, ratio=0.85, floor=0.85**32)}


@pytest.fixture(scope="module", autouse=True)
def _report():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    yield
    TABLE.note(
        f"N={N} latents (the same for both), k={K}, tol={TOL}, global_directions(batch_size=64, "
        "jvp='double_backward', trace_probes=8); LowRankGAN's way forms the Jacobians "
        f"{BATCH} samples at a time; 1 - |cos| and relative gaps per direction v1..v{K} (1 - |cos| "
        "~ angle^2 / 2); max_one_minus_cos_gapped: over the directions with "
        f"relative gap >= {GAP}; angle_deg: largest principal angle between the two top-k subspaces; "
        "subspace_gap: (lam_k - lam_k+1) / lam_1; medians of interleaved rounds"
    )
    TABLE.report()


def lowrank_gan(G, latents):
    """(eigenvalues [d] descending, eigenvectors [d, d] as rows) of mean_n J_n^T J_n, from the
    full per-sample Jacobians."""
    d = latents.shape[1]
    with torch.no_grad():
        m = G(latents[:1]).numel()
    M = torch.zeros(d, d, dtype=torch.float64)
    for zb in latents.split(BATCH):
        J = full_jacobian(G, zb, reverse=m < d).double()
        M += torch.einsum("nmi,nmj->ij", J, J)
    lam, U = torch.linalg.eigh(M / latents.shape[0])
    return lam.flip(0), U.flip(1).T


def _fmt(values, spec: str) -> str:
    return "/".join(format(float(v), spec) for v in values)


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("d", [128, 512])
def test_directions(benchmark, d, size, spectrum):
    torch.manual_seed(0)
    G = DCGAN(d, size=size, width=16, latent_scales=SPECTRA[spectrum](d))
    latents = torch.randn(N, d, generator=torch.Generator().manual_seed(1))
    reverse = size * size < d
    out = {}

    def ours():
        out["ours"] = global_directions(G, None, K, latents=latents, batch_size=64, tol=TOL, jvp="double_backward")

    def theirs():
        out["theirs"] = lowrank_gan(G, latents)

    baseline = f"LowRankGAN (vmap {'jacrev' if reverse else 'jacfwd'} + eigh)"
    medians = interleaved(benchmark, {baseline: theirs, "global_directions": ours}, rounds=ROUNDS)
    found, (lam, U) = out["ours"], out["theirs"]
    V = found.directions.double()
    cos = ((V / V.norm(dim=-1, keepdim=True)) * U[:K]).sum(-1).abs().clamp(max=1.0)
    Q = torch.linalg.qr(V.T).Q.T  # float64-orthonormal rows spanning the directions
    sin = torch.linalg.matrix_norm(Q - (Q @ U[:K].T) @ U[:K], ord=2)  # sine of the largest principal angle
    above = torch.cat([lam[:1] + float("inf"), lam[: K - 1]])
    gap = torch.minimum(above - lam[:K], lam[:K] - lam[1 : K + 1]) / lam[0]
    gapped = gap >= GAP
    group = f"{spectrum} DCGAN {size}x{size} (m={size * size}), d={d}, N={N}, k={K}"
    TABLE.add(group, baseline, medians[baseline], baseline=True)
    TABLE.add(
        group,
        "global_directions",
        medians["global_directions"],
        products=found.products,
        converged=bool(found.converged.all()),
        one_minus_cos=_fmt(1 - cos, ".0e"),
        gap=_fmt(gap, ".3f"),
        max_one_minus_cos_gapped=f"{float((1 - cos[gapped]).max()):.0e} ({int(gapped.sum())}/{K} gapped)"
        if gapped.any()
        else "-",
        angle_deg=f"{math.degrees(math.asin(min(1.0, float(sin)))):.1e}",
        subspace_gap=f"{float((lam[K - 1] - lam[K]) / lam[0]):.3f}",
        max_value_err=f"{float((found.values.double() / lam[:K] - 1).abs().max()):.1e}",
        speedup=f"{medians[baseline] / medians['global_directions']:.2f}x",
    )
