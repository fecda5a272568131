"""spectral_ops.testing.families: the test subjects are library wing (torch only), and its DCGAN
is the application's DCGAN generator, draw for draw."""

import pytest
import torch

from spectral_ops.lab.models import Generator
from spectral_ops.testing.families import DCGAN, dcgan


@pytest.mark.parametrize("d, channels, out_channels, size", [(16, 16, 1, 16), (8, 4, 3, 16), (6, 8, 1, 32)])
def test_the_testing_dcgan_is_the_lab_generator_without_norm(d, channels, out_channels, size):
    """Same seed, same parameters and the same outputs as spectral_ops.lab.models.Generator with
    norm="none", output="tanh" (what tests/gen_families.py built before it moved into the library)."""
    torch.manual_seed(3)
    ours = DCGAN(d, size=size, channels=channels, out_channels=out_channels)
    torch.manual_seed(3)
    lab = Generator(d, size=size, width=channels, channels=out_channels, norm="none", output="tanh")
    assert [p.shape for p in ours.parameters()] == [p.shape for p in lab.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), lab.parameters()))
    z = torch.randn(5, d)
    assert torch.equal(ours(z), lab(z))
    with pytest.raises(ValueError, match="z must be"):
        ours(torch.randn(2, d + 1))


def test_dcgan_builds_the_16_pixel_network():
    torch.manual_seed(0)
    G = dcgan(8, channels=4, out_channels=2)
    assert tuple(G(torch.randn(3, 8)).shape) == (3, 2, 16, 16)
