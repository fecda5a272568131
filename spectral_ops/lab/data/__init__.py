"""Procedural datasets with ground-truth generative factors.

Every dataset renders grayscale images in [0, 1] from integer factor levels, deterministically for
a seed, and returns the factors alongside the images:

- `Sprites`: dSprites-like shapes (square, ellipse, heart, triangle) x scale x rotation x position.
- `Dots`: two dots of different sizes, each at its own (x, y) position.
- `Spot`: one disc; x, y, radius and brightness, with distinct output sensitivities.

`make_dataset(name, n, ...)` builds one by name; `DATASETS` lists the names.
"""

from spectral_ops.lab.data.procedural import DATASETS, Dots, ProceduralDataset, Spot, Sprites, make_dataset

__all__ = ["DATASETS", "Dots", "ProceduralDataset", "Spot", "Sprites", "make_dataset"]
