"""How spectral_ops calls a user's generator: the checks and guarantees around every extra pass.

Every public entry point (`jacobian_topk`, `spectral_penalty`, `SpectralRegularizer`,
`trace_trajectory`) runs its generator passes inside `prepared(G, z, ...)`, which ties together
one module per job (each module's docstring states its guarantees):

- latents.py: latents of any shape (B, ...), checked and flattened to [B, d]; G called on them
  through a `FlatGenerator`, which reshapes them back and hands G a copy of its input on every
  call; per-row arguments attached by `conditioned`;
- holders.py: the nn.Modules G is made of, also when G is a lambda, a `functools.partial`, a bound
  method, a callable object or a plain function (`scan`: bounded, cycle-safe), and G's identity
  for the per-generator caches;
- guards.py: z's dtype against G's parameters, the BatchNorm policy (train-mode BatchNorm refused
  or run in eval mode), and every buffer of the modules G runs left as found (and, around the
  probe, every parameter too);
- probes.py: the one-off probe, cached per generator (one row per latent, a function of z, rows
  independent of their batch-mates, jvp="auto"'s exact mode), and `measured`, which keeps other
  per-generator measurements in the same cache.

The public names of those modules stay importable from here.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from .guards import batch_policy, check_dtype, preserved_buffers
from .holders import generator_identity, modules_of, scan
from .jacobian import name_rows, unwrap
from .latents import (
    FlatGenerator,
    check_autograd_available,
    check_row_args,
    conditioned,
    flat_generator,
    flatten_latents,
    select_rows,
    validate_latents,
)
from .probes import check_function_of_z, measured, probe, probe_modules


@contextlib.contextmanager
def prepared(
    G: Callable, z: torch.Tensor, *, jvp: str, batchnorm: str, name: str = "z"
) -> Iterator[tuple[Callable, torch.Tensor, str]]:
    """Everything `jacobian_topk` and the regularizer do around their passes (module docstring).

    z: [B, ...] latents.  Yields (G on flat latents, z as [B, d], the JVP mode to use); on exit
    G's BatchNorm modes and every buffer are as they were.
    """
    if not callable(G):
        raise TypeError(f"G must be callable, got {type(G).__name__}")
    check_autograd_available()
    flat, latent_shape = flatten_latents(z, name)
    G = unwrap(G)
    modules, missed = scan(G)
    check_dtype(modules, flat, name)
    check_row_args(G, flat.shape[0])
    call = flat_generator(G, latent_shape)
    if batchnorm not in ("error", "eval"):
        raise ValueError(f"batchnorm must be 'error' or 'eval', got {batchnorm!r}")
    with torch.enable_grad():
        mode, ran = probe_modules(call, flat, jvp, modules, batchnorm, missed)  # G's state as found on exit
        with batch_policy(G, batchnorm, ran), preserved_buffers(G, ran):  # the modules G runs
            yield call, flat, mode


__all__ = [
    "prepared",
    "probe",
    "measured",
    "conditioned",
    "flatten_latents",
    "flat_generator",
    "FlatGenerator",
    "select_rows",
    "modules_of",
    "scan",
    "probe_modules",
    "generator_identity",
    "batch_policy",
    "preserved_buffers",
    "check_function_of_z",
    "validate_latents",
    "check_dtype",
    "check_autograd_available",
    "name_rows",
]
