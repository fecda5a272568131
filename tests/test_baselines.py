"""Peer regularizers: zero where the maths says so, positive otherwise, differentiable, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from spectral_ops.baselines import PathLengthRegularizer, hessian_penalty, orojar, path_length


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Additive(nn.Module):
    """G(z) = sum_i f_i(z_i) per output: a diagonal Hessian for every output value."""

    def __init__(self, d=4, m=6):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d, m, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, m, dtype=torch.float64))

    def forward(self, z):
        return (torch.tanh(z[:, :, None] * self.a) * self.b).sum(1)


def _mixing(d=4, m=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, m)).double()


def test_hessian_penalty_zero_for_additive_generator_positive_otherwise():
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    G = Additive()
    zero = hessian_penalty(G, z, k=4, generator=_gen(2))
    assert float(zero) <= 1e-20
    mixed = hessian_penalty(_mixing(), z, k=4, generator=_gen(2))
    assert float(mixed) > 1e-3
    mixed.backward()


def test_hessian_penalty_estimates_off_diagonal_hessian():
    """E Var_v(v^T H v) = 2 sum_{i!=j} H_ij^2 for G(z) = z0 * z1 (H_01 = 1): 2 * 2 = 4."""
    G = lambda z: (z[:, 0] * z[:, 1])[:, None]  # noqa: E731
    z = torch.randn(2000, 2, dtype=torch.float64, generator=_gen(3))
    value = hessian_penalty(G, z, k=2, reduction="mean", generator=_gen(4))
    assert abs(float(value) - 4.0) < 0.4  # 2000 samples of a (0 or 8) variable: sd ~ 0.09


def test_orojar_zero_for_orthogonal_columns_positive_otherwise():
    torch.manual_seed(0)
    G = nn.Linear(4, 7, bias=False).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(7, 4, dtype=torch.float64))
        G.weight.copy_(q * torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))  # orthogonal, unequal norms
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    assert float(orojar(G, z, k=4, generator=_gen(2))) <= 1e-20
    with torch.no_grad():
        G.weight[:, 1] += 0.5 * G.weight[:, 0]  # columns 0 and 1 no longer orthogonal
    value = orojar(G, z, k=4, generator=_gen(2))
    assert float(value) > 1e-2
    value.backward()
    assert G.weight.grad.abs().sum() > 0


def test_orojar_estimates_off_diagonal_of_jtj():
    """Linear G: Var_v(v^T A v) with population variance over k=2 draws has mean sum_{i!=j} A_ij^2."""
    W = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # A = W^T W = [[1, 1], [1, 2]]
    G = lambda z: z @ W.T  # noqa: E731
    z = torch.zeros(4000, 2, dtype=torch.float64)
    value = orojar(G, z, k=2, reduction="mean", generator=_gen(5))
    assert abs(float(value) - 2.0) < 0.2  # sum_{i!=j} A_ij^2 = 2


def test_path_length_zero_for_equal_lengths_positive_otherwise():
    torch.manual_seed(0)
    G = nn.Linear(4, 6).double()
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    noise = torch.randn(1, 6, dtype=torch.float64).expand(5, 6)  # same y for every row; J constant
    assert float(path_length(G, z, noise=noise)) <= 1e-24
    value = path_length(_mixing(m=6), z, noise=noise)
    assert float(value) > 1e-6
    value.backward()


def test_path_length_module_running_mean_and_state():
    G = _mixing()
    pl = PathLengthRegularizer(decay=0.5, every=2)
    z = torch.randn(8, 4, dtype=torch.float64, generator=_gen(1))
    first = pl(G, z)
    assert first.requires_grad and torch.isfinite(pl.mean)
    m0 = float(pl.mean)
    skipped = pl(G, z)
    assert float(skipped) == 0 and skipped.grad_fn is None
    pl(G, z)
    assert float(pl.mean) != m0
    other = PathLengthRegularizer()
    other.load_state_dict(pl.state_dict())
    assert float(other.mean) == float(pl.mean) and int(other.step) == 3


@pytest.mark.parametrize("fn", [hessian_penalty, orojar])
@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(k=1), ValueError, "k"), (dict(k=2.0), TypeError, "k"), (dict(epsilon=0), ValueError, "epsilon"),
    (dict(reduction="sum"), ValueError, "reduction"), (dict(batchnorm="x"), ValueError, "batchnorm"),
])
def test_bad_arguments(fn, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        fn(nn.Linear(4, 3), torch.randn(2, 4), **kwargs)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, path_length])
def test_bad_latents(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(nn.Linear(4, 3), torch.randn(4))
    z = torch.randn(3, 4)
    z[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fn(nn.Linear(4, 3), z)
    with pytest.raises(TypeError, match="G"):
        fn(3, torch.randn(2, 4))
