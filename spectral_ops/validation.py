"""Argument checks shared by every public entry point of the library (and by the application).

One style everywhere: the error names the argument, says what it must be and shows what it got.
A value of the wrong type (a float for an int, a str for a bool) raises TypeError; a value of the
right type outside its range, or not among the allowed choices, raises ValueError.  Latents are
checked where they are flattened (latents.py), warm starts here (`check_init`).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, TypeGuard, overload

import torch


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


@overload
def check_int(
    name: str,
    value: object,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    allow_none: Literal[False] = False,
) -> int: ...


@overload
def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None, *, allow_none: bool
) -> int | None: ...


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None, *, allow_none: bool = False
) -> int | None:
    """An int (not a bool) in [minimum, maximum]; None passes when allow_none."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (
            f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None else f"in [{minimum}, {maximum}]"
        )
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return value


def check_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the interval given by low/high (closed unless *_open): TypeError
    for anything that is not an int or a float (a str, a bool, None, a tensor), ValueError for a
    non-finite or out-of-range one."""
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a finite number{_interval(low, high, low_open, high_open)}, got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{_interval(low, high, low_open, high_open)}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        raise ValueError(f"{name} must be a finite number{_interval(low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def _interval(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_choice(name: str, value: object, choices: Sequence) -> object:
    """One of `choices` (strings, or None where a choice is "none"), compared by identity or
    equality of the same type, so a tensor or a number never passes for a name."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes (negatives wrap mod 2**64)


def check_seed(seed: object, allow_none: bool = True, name: str = "seed") -> None:
    """A seed is an int in [-2**63, 2**64 - 1], what a torch generator accepts (or None where a
    default seed is allowed).  A seed outside that range is refused rather than wrapped, so two
    different seeds never silently give the same numbers.  name: how the error names it."""
    if seed is None and allow_none:
        return
    if not _is_int(seed):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(seed).__name__}")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be an int in [-2**63, 2**64 - 1], got {seed!r}")


def derived_seed(seed: int, *parts: int) -> int:
    """A generator seed made from a checked seed and offsets (a step, a rank): seed + sum(parts)
    wrapped into [0, 2**64).  torch reads a negative seed modulo 2**64, so every sum that it
    already accepted gives the same numbers as before; sums past its range wrap instead of
    raising deep inside torch."""
    return (seed + sum(parts)) % 2**64


def check_k(k: object, d: int) -> int:
    """The number of singular vectors: an int with 1 <= k <= d (the latent size)."""
    if not _is_int(k):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= d:
        raise ValueError(f"k must satisfy 1 <= k <= latent_dim={d}, got k={k}")
    return k


def check_iters_tol(iters: object, tol: object) -> None:
    """iters: an int >= 1; tol: a finite number >= 0."""
    check_int("iters", iters, 1)
    check_number("tol", tol, 0)


def check_init(init: object, B: int, k: int, d: int) -> torch.Tensor:
    """A warm start ([k, d] or [B, k, d], floating, finite), broadcast to [B, k, d]."""
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"init must be a torch.Tensor or None, got {type(init).__name__}")
    if init.shape == (k, d):
        init = init.expand(B, k, d)
    if init.shape != (B, k, d):
        raise ValueError(f"init must have shape ({k}, {d}) or ({B}, {k}, {d}), got {tuple(init.shape)}")
    check_float_values("init", init)
    return init


def check_float_values(name: str, t: torch.Tensor) -> None:
    """A tensor argument whose values the library reads: not on the meta device, floating, finite."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: spectral_ops needs its values")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values")
