"""Small DCGAN-style generator (8x8 to 64x64) and discriminator (32x32 / 64x64 images)."""

from spectral_ops.lab.models.dcgan import LATENT_MAPS, NORMS, Discriminator, Generator, PixelNorm

__all__ = ["LATENT_MAPS", "NORMS", "Discriminator", "Generator", "PixelNorm"]
