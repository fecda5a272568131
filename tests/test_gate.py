"""The known-answer gate (docs/regularizer.md, "The known-answer gate"): every (loss, grad) pair the library offers, and
SpectralRegularizer's defaults, turn a randomly rotated G(z) = f(Rz) back to the axes.

Alignment of factor f = max_j R_fj^2 (1 on an axis, about 0.5 for a random rotation at d = 8).
Budgets: 200 optimizer steps (batch 16) for spectral_penalty; the defaults compute on one call
in 8, so they get 1600 calls (200 computed).  A pair that stops aligning fails here.

Where users are (GateGenerator, bench/bench_gate.py has the whole grid with 3 rotations per
cell): the defaults at every (d in 8, 64, 256) x (rank: k = F, exactly unused, weakly used) x
(profile: constant, varying with z) on one rotation each (a different seed per cell), and every
(loss, grad, weights) at one hard point (d = 64, exactly unused directions, varying sensitivity)
on one rotation, plus the floor there.  Cut for CI time, and left to the bench: the other seeds,
and the per-pair settings at the other 17 points of the grid.
"""

from __future__ import annotations

import pytest
import torch

from spectral_ops import SpectralRegularizer, spectral_penalty
from spectral_ops.testing.known_answer import (
    GATE_PROFILES,
    GATE_RANKS,
    GateGenerator,
    RotatedRenderer,
    factor_alignment,
    run_gate,
)
from spectral_ops.regularizer import GRADS, LOSSES, WEIGHTS

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
    r = run_gate(
        lambda G, z: spectral_penalty(G, z, k=2, iters=20, loss=loss, grad="fast"), seed=seed, steps=200, judged=2
    )
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
    r = run_gate(
        lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, weights="singular"), seed=seed, steps=steps
    )
    assert r.min_alignment >= GATE and r.distinct_axes, r


def test_singular_weighting_of_offdiag_is_slow():
    """offdiag with A = sum s_i^2 v_i v_i^T barely moves the weak factors in the standard budget:
    the reason its default weighting is spectrum-free."""
    r = run_gate(
        lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss="offdiag", weights="singular"), seed=2, steps=200
    )
    assert r.min_alignment < 0.9, r


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(latent_dim=3), "latent_dim"),
        (dict(latent_dim=8.0), "latent_dim"),
        (dict(sensitivities=()), "sensitivities"),
        (dict(sensitivities=(1.0, -1.0)), "sensitivities"),
        (dict(pixels=8), "pixels"),
    ],
)
def test_renderer_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RotatedRenderer(**kwargs)


@pytest.mark.parametrize("judged", [0, 5])
def test_gate_bad_judged(judged):
    with pytest.raises(ValueError, match="judged"):
        run_gate(lambda G, z: G(z).sum(), steps=1, judged=judged)


# ---- where users are: GateGenerator ---------------------------------------------------------------
SHAPES = [dict(GATE_RANKS[r], **GATE_PROFILES[p]) for r in GATE_RANKS for p in GATE_PROFILES]


def _moved(G: GateGenerator, std: float = 0.3) -> GateGenerator:
    """G with its rotation moved away from R0 (so the low-rank expm is exercised)."""
    with torch.no_grad():
        G.skew.normal_(std=std, generator=torch.Generator().manual_seed(1))
    return G


@pytest.mark.parametrize("d", [8, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}-{p}" for r in GATE_RANKS for p in GATE_PROFILES])
def test_gate_generator_has_the_known_spectrum(shape, d):
    """J^T J = R^T diag(s(z)^2) R (explicit Jacobian, float64) with s(z) = G.spectrum(z): the
    used factors' s_f (1 + a cos(w u_f + c_f)), then `weak` (or exactly 0) for the rest."""
    G = _moved(GateGenerator(d, **shape, seed=3, dtype=torch.float64))
    z = 2 * torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = torch.func.vmap(torch.func.jacrev(lambda x: G(x[None])[0]))(z)  # [4, m, d]
    R, s = G.rotation(), G.spectrum(z)  # [d, d], [4, d]
    assert torch.allclose(J.transpose(1, 2) @ J, (R.T[None] * s[:, None, :] ** 2) @ R, rtol=0, atol=1e-13)
    assert torch.allclose(R @ R.T, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-13)
    F = G.num_factors
    weak = shape.get("weak", 0.0)
    assert bool((s[:, F:] == weak).all()) and bool((s[:, :F] > weak).all())
    if "wobble" not in shape:
        assert torch.equal(s[:, :F], torch.tensor(shape["sensitivities"], dtype=torch.float64).expand(4, F))
    # the output: F rings of 48 pixels, plus d - F readout values when the rest is weakly used
    assert J.shape[1] == F * 48 + (d - F if weak else 0)


def test_gate_generator_rotation_is_the_dense_expm():
    """R = expm(P - P^T) R0 with P = [skew; 0]: the O(d F^2) form equals torch's d x d matrix_exp."""
    G = _moved(GateGenerator(64, (2.0, 1.0, 0.5), seed=2, dtype=torch.float64), std=1.0)
    P = torch.zeros(64, 64, dtype=torch.float64)
    P[:3] = G.skew.detach()
    assert torch.allclose(G.rotation(), torch.linalg.matrix_exp(P - P.T) @ G.R0, rtol=0, atol=1e-13)
    assert torch.equal(GateGenerator(64, (2.0, 1.0, 0.5), seed=2, dtype=torch.float64).rotation(), G.R0)


def test_varying_profile_reorders_the_factors():
    """With wobble 0.75 the most sensitive factor changes across latent space: measured on 10^5
    latents, factor 1 is not the top one on 19.9% of them and the order differs from the mean
    order on 59.7% (each to within 0.5% here); the constant profile never reorders."""
    z = torch.randn(100_000, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for shape, top, reordered in ((SHAPES[1], 0.199, 0.597), (SHAPES[0], 0.0, 0.0)):
        order = GateGenerator(8, **shape, dtype=torch.float64).spectrum(z)[:, :4].argsort(1, descending=True)
        assert abs(float((order[:, 0] != 0).double().mean()) - top) < 0.005
        assert abs(float((order != torch.arange(4)).any(1).double().mean()) - reordered) < 0.005


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(weak=-0.1), "weak"),
        (dict(weak=0.5), "weak"),
        (dict(wobble=1.0), "wobble"),
        (dict(wobble=-0.1), "wobble"),
        (dict(frequency=0.0), "frequency"),
        (dict(latent_dim=3), "latent_dim"),
        (dict(pixels=8), "pixels"),
        (dict(sensitivities=(1.0, 0.0)), "sensitivities"),
    ],
)
def test_gate_generator_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GateGenerator(**{"latent_dim": 8, "sensitivities": (2.0, 1.0, 0.5, 0.25), **kwargs})


GRID = [(d, r, p) for d in (8, 64, 256) for r in GATE_RANKS for p in GATE_PROFILES]


@pytest.mark.parametrize("d,rank,profile", GRID, ids=[f"d{d}-{r}-{p}" for d, r, p in GRID])
def test_the_defaults_align_where_users_are(d, rank, profile):
    """SpectralRegularizer(d) as a user writes it, 1600 calls (200 computed), on one rotation
    per cell (seed = the cell's index mod 3).  The rank="unused" cells (rank J = 3 < k = 4, the
    other directions exactly unused) fail on main before the regularizer dropped null vectors
    from the loss (measured on the tree at 4be4901, before 667108d): weakest factor 0.33 / 0.30
    at d = 8, 0.08 / 0.08 at d = 64, 0.03 / 0.05 at d = 256 (constant / varying profile), a
    random rotation's level (bench/results/gate.md, "before")."""
    seed = GRID.index((d, rank, profile)) % 3
    r = run_gate(
        SpectralRegularizer(d),
        generator=dict(latent_dim=d, **GATE_RANKS[rank], **GATE_PROFILES[profile]),
        seed=seed,
        steps=1600,
    )
    assert r.computed_calls == 200
    assert r.min_alignment >= GATE and r.distinct_axes, r


HARD = dict(latent_dim=64, **GATE_RANKS["unused"], **GATE_PROFILES["varying"])


def test_the_gate_can_fail_at_the_hard_point():
    """Negative control at d = 64: a loss blind to the spectrum leaves the factors where a random
    rotation put them (weakest about 0.09)."""
    r = run_gate(lambda G, z: 0.0 * G(z).sum(), generator=HARD, seed=0, steps=50)
    assert r.min_alignment < 0.2


# assigned with singular weights ends short of the gate here (0.84 fast, 0.86 implicit, after
# 667108d).  "assigned" sends the i-th vector by singular value to axis i; with the varying profile
# the order of the factors changes across z, so the per-sample targets disagree.  In the bench it
# fails only where the factors reorder (d = 64 varying: 0.80-0.86 with k = F too) and passes with
# the constant profile.  Strict: the suite fails once it aligns, so the mark is removed then.
_ASSIGNED_SINGULAR = pytest.mark.xfail(
    strict=True,
    reason="assigned + singular weights: per-sample axis targets disagree when the factors reorder across z",
)
HARD_SETTINGS = [
    pytest.param(loss, grad, weights, marks=_ASSIGNED_SINGULAR if (loss, weights) == ("assigned", "singular") else ())
    for loss in LOSSES
    for grad in GRADS
    for weights in WEIGHTS
]


@pytest.mark.parametrize("loss,grad,weights", HARD_SETTINGS)
def test_every_setting_aligns_at_the_hard_point(loss, grad, weights):
    """d = 64, 3 factors and 61 exactly unused directions (k = 4 > rank J), sensitivities that
    reorder across z.  Fails on main before 667108d (tree at 4be4901) for 10 of the 12 settings
    (weakest factor 0.06-0.54, mostly a random rotation's 0.09): the null vector's loss pushed the
    rotation around.  offdiag with singular weights passed there already (its null vector weighs s^2 = 0)."""
    r = run_gate(
        lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, grad=grad, weights=weights),
        generator=HARD,
        seed=0,
        steps=200,
    )
    assert r.min_alignment >= GATE and r.distinct_axes, r


@pytest.mark.parametrize("loss", LOSSES)
def test_implicit_aligns_with_weakly_used_directions(loss):
    """d = 8, 3 factors and 5 directions at singular value 0.01: the 4th vector lies in a tied
    cluster of weak directions, where the eigenvector derivative is undefined.  grad="implicit"
    ended at 0.22-0.42 here (every loss, uniform weights) while its conjugate gradients divided by
    the rounding of a zero curvature; with the curvature floor of the in-block rule it aligns."""
    r = run_gate(
        lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, grad="implicit"),
        generator=dict(latent_dim=8, **GATE_RANKS["weak"]),
        seed=0,
        steps=200,
    )
    assert r.min_alignment >= GATE and r.distinct_axes, r
