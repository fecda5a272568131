"""Lazy regularization, once for every regularizer: compute the penalty on one call in `every`
and scale it by `every` (StyleGAN2's schedule), so its average over calls is unchanged while
its cost falls by `every`.  Skipped calls return a zero leaf that backward() accepts.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .ops.common import compute_dtype
from .validation import check_int


class LazyPenalty(nn.Module):
    """Base of the lazy regularizers: subclasses implement `penalty(G, z, step)`.

    Buffer `step` (in state_dict) counts trainer iterations: every call, computed or skipped,
    and every iteration `due()` reports as not due.  It advances only when a call succeeds, so
    a call that raises leaves the schedule where it was.  The count is kept on the host as well
    (`_count`), so that deciding whether to compute never reads a device tensor back.

    Two ways to use it:

    - one loss: ``loss_G = loss_G + reg(G, z)`` on every iteration (skipped calls return a zero);
    - a separate regularization phase (StyleGAN2): ``if reg.due(): reg(G, z).backward()`` on
      every iteration; `due()` advances the schedule on the iterations it skips.
    `will_compute` reads the schedule without advancing it; a loop that only reads it and calls
    when it is True would compute once and stall, so that pattern warns.
    """

    step: torch.Tensor  # buffer, registered in __init__

    def __init__(self, every: int):
        super().__init__()
        self.every = check_int("every", every, 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._count = 0  # host copy of `step`
        self._idle_reads = 0  # will_compute reads of False with no call or due() since

    @property
    def will_compute(self) -> bool:
        """Whether the next call computes the penalty (False: it returns a zero at no cost).
        Reading it does not advance the schedule: in a separate phase use `due()`."""
        due = self._count % self.every == 0
        self._idle_reads = 0 if due else self._idle_reads + 1
        if self._idle_reads == 2 * self.every:
            warnings.warn(
                f"{type(self).__name__}.will_compute has read False {2 * self.every} times with no call in "
                "between: the schedule counts calls, so a loop that calls only when will_compute is "
                "True stalls after its first computed call.  In a separate regularization phase write "
                "`if reg.due(): reg(G, z).backward()`: due() counts the skipped iterations.",
                UserWarning,
                stacklevel=2,
            )
        return due

    def due(self) -> bool:
        """For a separate regularization phase, once per trainer iteration: True when this
        iteration computes (then call the regularizer, which advances the schedule); False
        otherwise, and the skipped iteration is counted."""
        self._idle_reads = 0
        if self._count % self.every == 0:
            return True
        self._advance()
        return False

    def _advance(self) -> None:
        self._count += 1
        self.step.fill_(self._count)  # written on its device, never read back

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count = int(self.step)  # a checkpoint's schedule (one read, at load time)

    def check_call(self, G: Callable, z: torch.Tensor) -> None:
        """Argument checks run on every call, computed or skipped (default: none).  They must not
        read tensor values (a skipped call makes no host synchronisation)."""

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, G: Callable, z: torch.Tensor) -> torch.Tensor:
        """The penalty scaled by `every` on computed calls; a zero leaf (no graph) otherwise."""
        self.check_call(G, z)
        self._idle_reads = 0
        step = self._count
        if step % self.every:
            self._advance()
            dtype = compute_dtype(z.dtype) if z.dtype.is_floating_point else torch.get_default_dtype()
            return torch.zeros((), dtype=dtype, device=z.device, requires_grad=True)
        value = self.penalty(G, z, step)
        self._advance()
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
