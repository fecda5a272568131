"""Argument rules shared by every public entry point (spectral_ops.validation): a bool argument
takes only a bool, and a seed only an int that a torch generator takes, each refused naming the
argument before any work."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import spectral_ops
from spectral_ops import (
    RegularizerConfig,
    SpectralRegularizer,
    global_directions,
    jacobian_topk,
    spectral_penalty,
    trace_trajectory,
)
from spectral_ops.validation import SEED_MAX, SEED_MIN, derived_seed

pytestmark = pytest.mark.usefixtures("one_thread")

D = 6


def _G(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ torch.linspace(-1.0, 1.0, D * 8, dtype=x.dtype).reshape(D, 8))


def _z() -> torch.Tensor:
    return torch.randn(3, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# one valid call per public entry point; **extra overrides one argument
CALLS = {
    "jacobian_topk": lambda **extra: jacobian_topk(_G, _z(), 2, **{"method": "power", **extra}),
    "spectral_penalty": lambda **extra: spectral_penalty(_G, _z(), 2, **extra),
    "trace_trajectory": lambda **extra: trace_trajectory(_G, _z(), steps=1, **extra),
    "global_directions": lambda **extra: global_directions(_G, 4, 2, latent_dim=D, dtype=torch.float64, **extra),
    "RegularizerConfig": lambda **extra: RegularizerConfig(**extra),
    "SpectralRegularizer": lambda **extra: SpectralRegularizer(D, **extra),
}


def _bool_arguments(name: str) -> list[str]:
    """The arguments of a public entry point whose default is a bool (a config's bool fields for
    the regularizer, which takes them as options)."""
    if name == "SpectralRegularizer":
        name = "RegularizerConfig"
    obj = getattr(spectral_ops, name)
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj) if isinstance(f.default, bool)]
    return [p.name for p in inspect.signature(obj).parameters.values() if isinstance(p.default, bool)]


def test_every_public_callable_is_covered():
    """A public function or class with a bool argument must be in CALLS (so the test below sees it)."""
    for name in spectral_ops.__all__:
        obj = getattr(spectral_ops, name)
        if callable(obj) and not name.startswith(("TopK", "Trajectory", "GlobalDirections")) and _bool_arguments(name):
            assert name in CALLS, name


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
@pytest.mark.parametrize("entry, arg", [(e, a) for e in CALLS for a in _bool_arguments(e)])
def test_a_non_bool_where_a_bool_is_expected_is_a_type_error(entry, arg, value):
    """Before: trace_trajectory(both_ways="no" / warm_start="no") and
    global_directions(stability="no") took the string as True (RegularizerConfig already refused)."""
    with pytest.raises(TypeError, match=f"{arg} must be a bool, got {type(value).__name__}"):
        CALLS[entry](**{arg: value})


SEEDED = ["jacobian_topk", "trace_trajectory", "global_directions", "RegularizerConfig", "SpectralRegularizer"]


@pytest.mark.parametrize("seed", [SEED_MAX + 1, SEED_MIN - 1, 2**70, -(2**70)])
@pytest.mark.parametrize("entry", SEEDED)
def test_a_seed_beyond_what_torch_takes_is_refused_by_every_entry_point(entry, seed):
    """Before: "Overflow when unpacking long long" from inside torch (or, where the seed was not
    used on that path, e.g. jacobian_topk's dense method, silently accepted)."""
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\], got "):
        CALLS[entry](seed=seed)
    if entry == "jacobian_topk":
        with pytest.raises(ValueError, match="seed must be an int in"):
            CALLS[entry](seed=seed, method="dense")


@pytest.mark.parametrize("entry", ["jacobian_topk", "trace_trajectory", "global_directions"])
def test_the_range_ends_are_accepted(entry):
    for seed in (SEED_MIN, SEED_MAX):
        CALLS[entry](seed=seed)


@pytest.mark.parametrize(
    "seed, parts",
    [
        (0, (1,)),
        (-1, (0,)),
        (SEED_MIN, (5, 7)),
        (SEED_MAX - 3, (2,)),
        (-5, (1_000_003 * 3,)),
        (12345 * 1_000_003, (17,)),
    ],
)
def test_derived_seed_draws_what_torch_draws_for_the_plain_sum(seed, parts):
    """Where seed + sum(parts) is a seed torch takes, derived_seed gives the same numbers (so every
    seed that worked before draws the same); the result is always in [0, 2**64)."""
    plain = seed + sum(parts)
    assert SEED_MIN <= plain <= SEED_MAX
    a = torch.randn(4, generator=torch.Generator().manual_seed(plain))
    b = torch.randn(4, generator=torch.Generator().manual_seed(derived_seed(seed, *parts)))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "seed, parts", [(SEED_MAX, (1,)), (SEED_MAX, (1_000_003,)), (SEED_MIN, (-1,)), (SEED_MAX * 1_000_003, (99,))]
)
def test_derived_seed_wraps_sums_beyond_the_range(seed, parts):
    """The sums that used to overflow inside torch (a regularizer step past a large seed, the
    independent set's seed + 1) wrap into [0, 2**64) and are taken."""
    s = derived_seed(seed, *parts)
    assert 0 <= s <= SEED_MAX and s == (seed + sum(parts)) % 2**64
    torch.Generator().manual_seed(s)
