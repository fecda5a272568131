"""Host synchronisations in the training path, counted on the CPU.

On a GPU every read of a tensor's value on the host (`bool(t)`, `t.item()`, `t.tolist()`,
`int(t)`, `float(t)`, `t.nonzero()`) waits for the device.  These tests patch those methods and
count what a `SpectralRegularizer` call makes.  Before this change a skipped lazy call made 2
(`int(self.step)` and the finiteness check of z) and a computed call with 2 power iterations 13.
The ones left are named where they happen:

- the finiteness of z and of G(z) on each forward graph (`name_rows` in `flatten_latents` and
  `JacobianOperator`: one graph for power; for krylov the solver's, its rebuilds on the running
  samples, and the gradient's);
- one per product, the finiteness of J^T J v (`scaled_product`: the solver must not run on NaN);
- one per convergence check (power: after each iteration but the last; krylov: one `int` per
  Rayleigh-Ritz);
- the alignment op's argument check (`ops._check_alignment_values`: four numbers);
- `regularizer.read_back`: the penalty's finiteness and the median worst residual, together.
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from torch import nn

from spectral_ops import SpectralRegularizer, krylov
from spectral_ops.jacobian import JacobianOperator

READS = ("__bool__", "item", "tolist", "__int__", "__float__", "nonzero")


@contextlib.contextmanager
def counted_reads():
    """Count host reads of tensor values inside the block: yields a Counter by method."""
    counts = collections.Counter()
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        original = saved[name]

        def read(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def counted_calls(module, name):
    """Count calls of module.name inside the block (the function still runs)."""
    calls = [0]
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, name, counting)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def _generator(d=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 40))


def test_a_skipped_call_reads_nothing():
    """A skipped call, its backward, and due() on a skipped iteration: no read at all."""
    G, reg = _generator(), SpectralRegularizer(16, every=3)
    reg(G, torch.randn(8, 16)).backward()
    with counted_reads() as counts:
        value = reg(G, torch.randn(8, 16))
        value.backward()
        assert not reg.due() and reg.will_compute
    assert sum(counts.values()) == 0, counts
    assert int(reg.step) == 3


def test_a_computed_power_call_reads_the_named_few():
    """solver="power", iters=2: z and G(z) (2), two products (2), the stop check after the first
    iteration (1), the alignment op's check (1), read_back (1)."""
    G = _generator()
    reg = SpectralRegularizer(16, every=1, solver="power", iters=2, tol=0.0, batch_fraction=1.0)
    reg(G, torch.randn(8, 16))  # the probe of G runs once, first
    with counted_reads() as counts:
        reg(G, torch.randn(8, 16)).backward()
    assert sum(counts.values()) == 7, counts


@pytest.mark.parametrize("d", [16, 64])
def test_a_computed_krylov_call_reads_one_per_product_and_check(d):
    G = _generator(d)
    reg = SpectralRegularizer(d, every=1, batch_fraction=1.0)
    reg(G, torch.randn(8, d))
    with (
        counted_reads() as counts,
        counted_calls(krylov, "scaled_product") as products,  # the krylov solver's products
        counted_calls(krylov, "_rayleigh_ritz") as checks,
        counted_calls(JacobianOperator, "__init__") as graphs,
    ):
        reg(G, torch.randn(8, d)).backward()
    assert products[0] >= 2 and checks[0] >= 1 and graphs[0] >= 2
    # z, the alignment op and read_back (3); G(z) on every forward graph: the solver's (rebuilt on
    # the running samples once they are half of it) and the gradient's
    assert sum(counts.values()) == 3 + graphs[0] + products[0] + checks[0], (counts, products, checks, graphs)
