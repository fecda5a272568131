"""G on flat latents: the latent checks, `FlatGenerator` and `conditioned`.

The library holds latents as [B, d]: a z of any shape (B, ...) is checked and flattened
(`flatten_latents`), d = prod(z.shape[1:]), and G is called on z reshaped back (`FlatGenerator`);
results come back in the flat layout, e.g. vectors [B, k, d] (`vectors.reshape(B, k, *z.shape[1:])`
for G's shape).  A `FlatGenerator` hands G a copy of its input on every call, so a G that writes to
its input (x.clamp_) works as G(z) does and never changes z.  Per-row arguments (class labels
[B]) ride with the latents: `conditioned` attaches them, `fold_rows` and `select_rows` repeat and
subset them with the rows.
"""

from __future__ import annotations

from typing import Callable, cast

import torch
from torch import nn

from .jacobian import FoldableGenerator, module_call, name_rows, unwrap


def check_autograd_available() -> None:
    """spectral_ops differentiates G: refuse torch.inference_mode() with the reason."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "spectral_ops differentiates G and cannot run inside torch.inference_mode(); "
            "call it outside that block (torch.no_grad() is fine: it turns grad on itself)"
        )


def flatten_latents(z: object, name: str = "z") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Check z [B, ...] (finite, floating, real device) and return (z as [B, d], z.shape[1:])."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() < 2:
        raise ValueError(f"{name} must have shape [batch, latent...] (2-D or more), got shape {tuple(z.shape)}")
    if not z.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if z.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: spectral_ops needs its values (move it to 'cpu' or 'cuda')")
    if z.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(z.shape)}")
    latent_shape = tuple(z.shape[1:])
    flat = z.reshape(z.shape[0], -1)
    name_rows(~torch.isfinite(flat).all(dim=1), f"{name} has non-finite values")
    return flat, latent_shape


def validate_latents(z: object, name: str = "z") -> torch.Tensor:
    """Check z is a finite floating [B, d] tensor; raise naming the bad rows otherwise."""
    if isinstance(z, torch.Tensor) and z.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, latent_dim], got shape {tuple(z.shape)}")
    return flatten_latents(z, name)[0]


class FlatGenerator(FoldableGenerator):
    """G as the library calls it: [N, d] -> G(z.reshape(N, *latent_shape), *row_args, **kwargs).

    row_args are tensors with one row per latent row (class labels [N], embeddings [N, e]): the
    library folds and subsets them with the latents (`fold_rows`, `select_rows`).  Build one with
    `conditioned`; latent_shape None passes z as the library holds it.
    """

    def __init__(
        self,
        G: Callable,
        latent_shape: tuple[int, ...] | None = None,
        row_args: tuple[torch.Tensor, ...] = (),
        kwargs: dict | None = None,
    ):
        self.G, self.latent_shape = G, (None if latent_shape is None else tuple(latent_shape))
        self.row_args, self.kwargs = tuple(row_args), dict(kwargs or {})

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        for a in self.row_args:
            if a.shape[0] != z.shape[0]:
                raise ValueError(f"a per-row argument of G has {a.shape[0]} rows for {z.shape[0]} latent rows")
        x = z if self.latent_shape is None else z.reshape(z.shape[0], *self.latent_shape)
        return self.G(x.clone(), *self.row_args, **self.kwargs)  # a copy: G may write to its input (x.clamp_)

    def functional_view(self) -> Callable:
        """This call for torch.func transforms (see jacobian.functional_view and FoldableGenerator)."""
        if not isinstance(self.G, nn.Module):
            return self

        def f(z: torch.Tensor) -> torch.Tensor:
            x = z if self.latent_shape is None else z.reshape(z.shape[0], *self.latent_shape)
            return module_call(cast(nn.Module, self.G), *self.row_args, **self.kwargs)(x)  # checked above

        return f

    def _with(self, **changes) -> "FlatGenerator":
        out = FlatGenerator(self.G, self.latent_shape, self.row_args, self.kwargs)
        out.__dict__.update(changes)
        return out

    def with_shape(self, latent_shape: tuple[int, ...]) -> "FlatGenerator":
        return self._with(latent_shape=None if len(latent_shape) == 1 else tuple(latent_shape))

    def fold_rows(self, k: int) -> "FlatGenerator":
        """The same G for latents folded k times (each row repeated k times in place)."""
        return self._with(row_args=tuple(a.repeat_interleave(k, dim=0) for a in self.row_args))

    def select_rows(self, index: torch.Tensor | slice) -> "FlatGenerator":
        """The same G for the latent rows `index` (a LongTensor or a slice)."""
        pick = (lambda a: a[index]) if isinstance(index, slice) else (lambda a: a.index_select(0, index.to(a.device)))
        return self._with(row_args=tuple(pick(a) for a in self.row_args))


def conditioned(G: Callable, *row_args: torch.Tensor, **kwargs) -> FlatGenerator:
    """G with extra arguments, for every spectral_ops entry point: G(z, *row_args, **kwargs).

    row_args: tensors with one row per row of z, e.g. class labels c [B] for G(z, c); the
    library repeats and subsets them with z.  kwargs: passed unchanged on every call, e.g.
    noise_mode="const" for a style generator with noise inputs.  Example::

        reg(spectral_ops.conditioned(G, c, noise_mode="const"), z)
    """
    if not callable(G):
        raise TypeError(f"G must be callable, got {type(G).__name__}")
    for i, a in enumerate(row_args):
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            raise TypeError(
                f"row argument {i} must be a tensor with one row per latent row, got "
                f"{type(a).__name__ if not isinstance(a, torch.Tensor) else 'a 0-d tensor'} "
                "(pass per-call constants as keyword arguments)"
            )
        if a.device.type == "meta":
            raise ValueError(
                f"row argument {i} is on the meta device: spectral_ops needs its values (move it to "
                f"the device of z), got a meta tensor of shape {tuple(a.shape)}"
            )
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            raise ValueError(
                f"keyword argument {key!r} is on the meta device: spectral_ops needs its values (move "
                f"it to the device of z), got a meta tensor of shape {tuple(value.shape)}"
            )
    return FlatGenerator(unwrap(G), None, row_args, kwargs)


def flat_generator(G: Callable, latent_shape: tuple[int, ...]) -> Callable:
    """The callable the library runs on [N, d] latents: a `FlatGenerator`, which hands G a copy of
    its input (a G that writes to its input, x.clamp_(...), then works as G(z) does and cannot
    change the library's latents or the caller's z)."""
    if isinstance(G, FlatGenerator) and G.latent_shape is None:
        return G.with_shape(latent_shape)
    if isinstance(G, FlatGenerator) and len(latent_shape) == 1:
        return G
    return FlatGenerator(G, None if len(latent_shape) == 1 else latent_shape)


def select_rows(G: Callable, index: torch.Tensor | slice) -> Callable:
    """G for a subset of the latent rows (only per-row arguments need subsetting)."""
    return G.select_rows(index) if isinstance(G, FlatGenerator) and G.row_args else G


def check_row_args(G: Callable, B: int) -> None:
    if isinstance(G, FlatGenerator):
        for i, a in enumerate(G.row_args):
            if a.shape[0] != B:
                raise ValueError(f"row argument {i} of the conditioned G has {a.shape[0]} rows, z has {B}")


__all__ = [
    "check_autograd_available",
    "flatten_latents",
    "validate_latents",
    "FlatGenerator",
    "conditioned",
    "flat_generator",
    "select_rows",
    "check_row_args",
]
