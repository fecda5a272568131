"""global_directions against the dense oracle: the mean of explicit J^T J over the same latents."""
from __future__ import annotations

import pytest
import torch

from gen_families import DCGAN4D, explicit_jacobian, families
from spectral_ops import global_directions
from spectral_ops.directions import subspace_angle_deg

pytestmark = pytest.mark.usefixtures("one_thread")


def _oracle(G, z):
    J = explicit_jacobian(G, z)                      # [N, m, d]
    M = (J.transpose(1, 2) @ J).mean(0)
    lam, U = torch.linalg.eigh(M)
    return lam.flip(0), U.flip(1).T, M


@pytest.mark.parametrize("name", ["mlp_tanh", "dcgan_convtranspose", "plain_function"])
def test_matches_the_mean_metric_oracle(name):
    G = families(12)[name]
    z = torch.randn(40, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam, U, M = _oracle(G, z)
    k = 3
    assert (lam[1:k + 1] / lam[:k]).max() < 0.95  # a gap: the directions are well defined
    out = global_directions(G, None, k, latents=z, batch_size=16, iters=200, tol=1e-9, trace_probes=None)
    assert bool(out.converged.all())
    cos = (out.directions * U[:k]).sum(-1).abs()
    assert cos.min() >= 1 - 1e-9, cos
    assert torch.allclose(out.values, lam[:k], rtol=1e-8)
    assert out.trace_exact and abs(out.trace / float(M.trace()) - 1) < 1e-10
    assert torch.allclose(out.explained, lam[:k].cumsum(0) / M.trace(), rtol=1e-8)


def test_hutchinson_trace_and_stability():
    G = families(12)["mlp_tanh"]
    z = torch.randn(64, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam, U, M = _oracle(G, z)
    out = global_directions(G, None, 2, latents=z, iters=100, tol=1e-8, trace_probes=8)
    assert abs(out.trace / float(M.trace()) - 1) < 0.1
    sampled = global_directions(G, 256, 2, latent_dim=12, iters=100, tol=1e-8, dtype=torch.float64,
                                stability=True, progress=True)
    assert sampled.stability_deg is not None and sampled.stability_deg < 10  # two sample sets agree
    assert subspace_angle_deg(sampled.directions, U[:2]) < 10


def test_4d_latents_and_bad_arguments():
    torch.manual_seed(0)
    G = DCGAN4D(nz=6).double().eval()
    out = global_directions(G, 32, 2, latent_dim=(6, 1, 1), dtype=torch.float64, iters=50)
    assert out.directions.shape == (2, 6)
    with pytest.raises(ValueError, match="exactly one of latent_dim"):
        global_directions(G, 32, 2)
    with pytest.raises(ValueError, match="n_samples"):
        global_directions(G, 0, 2, latent_dim=6)
    with pytest.raises(ValueError, match="k must satisfy"):
        global_directions(G, 8, 7, latent_dim=(6, 1, 1), dtype=torch.float64)
    with pytest.raises(ValueError, match="trace_probes"):
        global_directions(G, 8, 2, latent_dim=(6, 1, 1), trace_probes=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_with_a_krylov_space_wider_than_the_latent(seed):
    """d=6, k=4 in float32 (the demo's shape): the block Krylov space (8 rows) exceeds the latent
    space.  Before: rows that were rounding noise got rescaled to 1e19 and eigh failed on inf."""
    from spectral_ops.lab.models import Generator

    torch.manual_seed(seed)
    G = Generator(latent_dim=6, size=32, width=8).eval()
    z = torch.randn(24, 6, generator=torch.Generator().manual_seed(seed))
    out = global_directions(G, None, 4, latents=z, batch_size=8, iters=30, tol=1e-5, trace_probes=None)
    lam, U, M = _oracle(G.double(), z.double())
    assert torch.allclose(out.values.double(), lam[:4], rtol=1e-4)
    assert abs(out.trace / float(M.trace()) - 1) < 1e-5 and float(out.explained[-1]) <= 1 + 1e-5
