"""DCGAN-style models: shapes, per-sample independence (no batch coupling), bad arguments."""

import pytest
import torch
from torch import nn

from spectral_ops import jacobian_topk
from spectral_ops.lab.models import Discriminator, Generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("norm", ["pixel", "layer", "none"])
def test_shapes_and_range(size, norm):
    torch.manual_seed(0)
    G, D = Generator(6, size=size, width=8, norm=norm), Discriminator(size=size, width=8)
    x = G(torch.randn(3, 6))
    assert x.shape == (3, 1, size, size)
    assert x.min() >= 0 and x.max() <= 1
    assert D(x).shape == (3,)


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("output, low, high", [("tanh", -1, 1), ("sigmoid", 0, 1)])
def test_small_sizes_and_output_activations(size, output, low, high):
    """The one DCGAN serves the bench, the tests and the topk command (sizes 8/16, tanh)."""
    torch.manual_seed(0)
    x = Generator(6, size=size, width=8, norm="none", output=output)(3 * torch.randn(4, 6))
    assert x.shape == (4, 1, size, size)
    assert x.min() >= low and x.max() <= high and x.min() < (low + high) / 2 < x.max()
    raw = Generator(6, size=size, width=8, norm="none", output="none")
    assert not any(isinstance(m, (nn.Tanh, nn.Sigmoid)) for m in raw.modules())


def test_generator_has_no_batch_coupling():
    torch.manual_seed(0)
    G = Generator(10).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in G.modules())
    z = torch.randn(5, 10)
    full = G(z)
    single = torch.cat([G(z[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-6)


def test_generator_works_with_jacobian_topk():
    torch.manual_seed(0)
    G = Generator(6, width=8)
    top = jacobian_topk(G, torch.randn(2, 6), k=2, iters=30)
    assert top.vectors.shape == (2, 2, 6) and top.values.shape == (2, 2)
    eye = top.vectors @ top.vectors.transpose(1, 2)
    torch.testing.assert_close(eye, torch.eye(2).expand(2, 2, 2), atol=1e-4, rtol=0)
    assert torch.all(top.values[:, 0] >= top.values[:, 1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="latent_dim"):
        Generator(0)
    with pytest.raises(ValueError, match="size"):
        Generator(4, size=40)
    with pytest.raises(ValueError, match="norm"):
        Generator(4, norm="batch")
    with pytest.raises(ValueError, match="output"):
        Generator(4, output="relu")
    with pytest.raises(ValueError, match="width"):
        Discriminator(width=0)
    with pytest.raises(ValueError, match="z must be"):
        Generator(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="images must be"):
        Discriminator()(torch.randn(2, 1, 64, 64))


def test_uniform_latent_map():
    """latent_map="uniform" is G's first op: u = sqrt(3) erf(z / sqrt(2)), uniform on
    [-sqrt(3), sqrt(3)] with unit variance, then the same layers as latent_map="none"."""
    torch.manual_seed(0)
    G = Generator(6, size=16, latent_map="uniform").double()
    plain = Generator(6, size=16).double()
    plain.load_state_dict(G.state_dict())
    z = torch.randn(4000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = 3**0.5 * torch.erf(z * 0.5**0.5)
    torch.testing.assert_close(G(z[:8]), plain(u[:8]), rtol=0, atol=0)
    assert float(u.abs().max()) < 3**0.5
    # uniform: the share of u below each quartile of U(-sqrt(3), sqrt(3)) is 1/4 (4000 draws: 4 sigma)
    edges = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * 3**0.5
    shares = torch.stack([(u < e).double().mean() for e in edges])
    sigma = (0.25 * 0.75 / u.numel()) ** 0.5
    assert torch.allclose(shares, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), atol=4 * sigma)
    with pytest.raises(ValueError, match="latent_map"):
        Generator(6, latent_map="gauss")
