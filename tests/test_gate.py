"""The known-answer gate (DESIGN.md section 8): every (loss, grad) pair the library offers, and
SpectralRegularizer's defaults, turn a randomly rotated G(z) = f(Rz) back to the axes.

Alignment of factor f = max_j R_fj^2 (1 on an axis, about 0.5 for a random rotation at d = 8).
Budgets: 200 optimizer steps (batch 16) for spectral_penalty; the defaults compute on one call
in 8, so they get 1600 calls (200 computed).  A pair that stops aligning fails here.
"""
from __future__ import annotations

import pytest
import torch

from spectral_ops import SpectralRegularizer, spectral_penalty
from spectral_ops.lab.known_answer import RotatedRenderer, factor_alignment, run_gate
from spectral_ops.regularizer import GRADS, LOSSES

SEEDS = (0, 1, 2)
GATE = 0.95


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_renderer_has_the_known_spectrum():
    """J^T J = R^T diag(s^2, 0...) R exactly (up to rounding), at any z."""
    G = RotatedRenderer(8, seed=3, dtype=torch.float64)
    z = 2 * torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = torch.func.vmap(torch.func.jacrev(lambda x: G(x[None])[0].reshape(-1)))(z)
    R = G.rotation()
    s2 = torch.tensor([4.0, 1.0, 0.25, 0.0625, 0, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(J.transpose(1, 2) @ J, (R.T * s2) @ R, atol=1e-12)
    assert torch.allclose(R @ R.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    start = factor_alignment(G)
    assert float(start.max()) < 0.9  # a real rotation away from the axes


def test_the_gate_can_fail():
    """Negative control: a loss that does not see the spectrum leaves R where it started."""
    r = run_gate(lambda G, z: 0.0 * G(z).sum(), seed=0, steps=50)
    assert r.min_alignment < 0.8


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_aligns_k4(loss, grad, seed):
    r = run_gate(lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, grad=grad), seed=seed, steps=200)
    assert r.min_alignment >= GATE and r.distinct_axes, r


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_fast_aligns_the_top_two_with_k2(loss, seed):
    r = run_gate(lambda G, z: spectral_penalty(G, z, k=2, iters=20, loss=loss, grad="fast"), seed=seed,
                 steps=200, judged=2)
    assert r.min_alignment >= GATE and r.distinct_axes, r


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_the_defaults_align(loss, seed):
    r = run_gate(SpectralRegularizer(8, loss=loss), seed=seed, steps=1600)
    assert r.computed_calls == 200
    assert r.min_alignment >= GATE and r.distinct_axes, r


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss,steps", [("l1", 200), ("assigned", 200), ("offdiag", 600)])
def test_singular_weights_align(loss, steps, seed):
    """weights="singular" passes too; offdiag's s^2 weights need 3x the budget (below)."""
    r = run_gate(lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, weights="singular"),
                 seed=seed, steps=steps)
    assert r.min_alignment >= GATE and r.distinct_axes, r


def test_singular_weighting_of_offdiag_is_slow():
    """offdiag with A = sum s_i^2 v_i v_i^T barely moves the weak factors in the standard budget:
    the reason its default weighting is spectrum-free."""
    r = run_gate(lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss="offdiag", weights="singular"),
                 seed=2, steps=200)
    assert r.min_alignment < 0.9, r


@pytest.mark.parametrize("kwargs,word", [
    (dict(latent_dim=3), "latent_dim"), (dict(latent_dim=8.0), "latent_dim"),
    (dict(sensitivities=()), "sensitivities"), (dict(sensitivities=(1.0, -1.0)), "sensitivities"),
    (dict(pixels=8), "pixels"),
])
def test_renderer_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RotatedRenderer(**kwargs)


@pytest.mark.parametrize("judged", [0, 5])
def test_gate_bad_judged(judged):
    with pytest.raises(ValueError, match="judged"):
        run_gate(lambda G, z: G(z).sum(), steps=1, judged=judged)
