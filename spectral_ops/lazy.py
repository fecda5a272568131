"""Lazy regularization, once for every regularizer: compute the penalty on one call in `every`
and scale it by `every` (StyleGAN2's schedule), so its average over calls is unchanged while
its cost falls by `every`.  Skipped calls return a zero leaf that backward() accepts.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .ops.reference import compute_dtype
from .validation import check_int


class LazyPenalty(nn.Module):
    """Base of the lazy regularizers: subclasses implement `penalty(G, z, step)`.

    Buffer `step` (in state_dict) counts calls; it advances only when a call succeeds, so a call
    that raises leaves the schedule where it was.  `will_compute` says whether the next call
    computes (a trainer with a separate regularization phase can skip that phase otherwise).
    """

    def __init__(self, every: int):
        super().__init__()
        self.every = check_int("every", every, 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def will_compute(self) -> bool:
        """Whether the next call computes the penalty (False: it returns a zero at no cost)."""
        return int(self.step) % self.every == 0

    def check_call(self, G: Callable, z: torch.Tensor) -> None:
        """Argument checks run on every call, computed or skipped (default: none)."""

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, G: Callable, z: torch.Tensor) -> torch.Tensor:
        """The penalty scaled by `every` on computed calls; a zero leaf (no graph) otherwise."""
        self.check_call(G, z)
        step = int(self.step)
        if step % self.every:
            self.step += 1
            dtype = compute_dtype(z.dtype) if z.dtype.is_floating_point else torch.get_default_dtype()
            return torch.zeros((), dtype=dtype, device=z.device, requires_grad=True)
        value = self.penalty(G, z, step)
        self.step += 1
        return value * self.every


class LazyFunction(LazyPenalty):
    """A stateless penalty f(G, z) -> scalar on the lazy schedule."""

    def __init__(self, fn: Callable[[Callable, torch.Tensor], torch.Tensor], every: int):
        super().__init__(every)
        self.fn = fn

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', self.fn)!r}, every={self.every}"

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        return self.fn(G, z)
