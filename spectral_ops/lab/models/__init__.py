"""Small DCGAN-style generator and discriminator for procedural 32x32 / 64x64 images."""
from spectral_ops.lab.models.dcgan import Discriminator, Generator, PixelNorm

__all__ = ["Discriminator", "Generator", "PixelNorm"]
