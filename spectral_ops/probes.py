"""The one-off probe of G, and the per-generator cache it shares with `measured`.

G is probed once (cached per generator, see `holders.generator_identity`) on two-row batches: that
it returns one row per latent, that G(z) is a function of z (two identical calls agree: no random
noise inputs, no train-mode Dropout), that a row's output does not depend on its batch-mates
(BatchNorm behind a function the module scan cannot see), and, for jvp="auto", which exact JVP
mode agrees with a central difference.  The probe runs under `guards.ProbeGuard`: a refused probe
changes nothing, and a G that changes its own parameters is refused.  It returns the modules G
runs, for the BatchNorm policy and the buffer guarantee of the passes, and warns once per
generator where it finds none and cannot look into all G holds.  `measured` keeps other
per-generator measurements (the product costs `jacobian_topk(method="auto")` times) in the same
cache.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Callable, TypeVar

import torch
from torch import nn

from .guards import ProbeGuard
from .holders import generator_identity, modules_of, user_generator
from .jacobian import (
    JVP_MODES,
    PER_ROW_HINT,
    JacobianOperator,
    check_output_rows,
    name_rows,
    raise_per_row_hint,
    supports_forward_ad,
)
from .latents import select_rows

_EXACT_MODES = ("double_backward", "forward")
_PROBE_SEED = 1234

# generator identity anchor (weakly held) -> {key: JVP mode that passed the probe, or what
# `measured` stored (jacobian_topk's timed product costs for method="auto")}
_probe_cache: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _probe_batches(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [2, d] batches that share row 0 (z[0]) and differ in row 1."""
    gen = torch.Generator(device="cpu").manual_seed(_PROBE_SEED)
    z0 = z[:1].detach()
    scale = 1.0 + float(z0.abs().max())
    noise = torch.randn(2, z.shape[1], generator=gen, dtype=torch.float64).to(z)
    a = z[1:2].detach() if z.shape[0] > 1 else z0 + 0.5 * scale * noise[:1]
    b = z0 + 0.25 * scale * noise[1:]
    return torch.cat([z0, a]), torch.cat([z0, b])


def _output(G: Callable, x: torch.Tensor, B: int) -> torch.Tensor:
    with torch.no_grad():
        y = G(x.clone())  # a copy: a G that writes to its input must not change the probe's batches or z
    y = check_output_rows(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"G changed the batch size: it must return one row per latent row, but for "
            f"{x.shape[0]} rows of z (z has {B}) it returned {y.shape[0]}.  {PER_ROW_HINT}"
        )
    return y.reshape(x.shape[0], -1)


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if a and b differ beyond rounding: max |a - b| > sqrt(eps) max(|a|, |b|)."""
    eps = torch.finfo(a.dtype if a.dtype.is_floating_point else torch.float32).eps
    a, b = a.double().nan_to_num(), b.double().nan_to_num()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) > math.sqrt(eps) * scale


def check_function_of_z(G: Callable, z: torch.Tensor) -> None:
    """Raise if G(z) is not a deterministic, row-wise function of z (three 2-row forwards)."""
    first, second = _probe_batches(z)
    B = z.shape[0]
    full, G = G, select_rows(G, slice(0, 2) if B > 1 else torch.tensor([0, 0]))
    try:
        y1 = _output(G, first, B)
    except RuntimeError as e:
        raise_per_row_hint(e, first.shape[0], B)
        raise
    if y1.device.type == "meta":
        raise ValueError(
            "G(z) is on the meta device: spectral_ops needs its values (G's parameters or a "
            "tensor it uses are on 'meta')"
        )
    if not bool(torch.isfinite(y1).all()):  # name every bad row of z, not the probe's
        name_rows(~torch.isfinite(_output(full, z.detach(), B)).all(dim=1), "G(z) has non-finite values (NaN or Inf)")
    y1_again, y2 = _output(G, first, B), _output(G, second, B)
    if _differ(y1, y1_again):
        raise ValueError(
            "G(z) is not a function of z: two calls with the same z returned different outputs (random "
            "noise inputs, train-mode Dropout, or another source of randomness).  Jacobians of a random "
            "map are undefined.  Fix the randomness for the regularizer's passes: constant noise "
            "(e.g. noise_mode='const' in a style generator, wrapped as lambda z: G(z, noise_mode='const')), "
            "G.eval() for Dropout, or a generator state seeded inside G's call."
        )
    if _differ(y1[0], y2[0]):
        raise ValueError(
            "G couples the rows of a batch: the output for a latent changed when its batch-mate changed "
            "(BatchNorm in training mode, or another batch statistic, possibly behind a function spectral_ops "
            "cannot look into).  Per-sample Jacobians are undefined then.  Put such layers in eval mode, "
            "or pass the module itself (or a lambda that refers to it) with batchnorm='eval'."
        )


def _central_difference(G: Callable, z: torch.Tensor, v: torch.Tensor, h: float) -> torch.Tensor:
    with torch.no_grad():
        return ((G(z + h * v) - G(z - h * v)) / (2 * h)).reshape(z.shape[0], -1).double()


def _verify_auto(G: Callable, z: torch.Tensor) -> str:
    """The first exact JVP mode whose J v agrees with central differences on a random probe.

    Agreement means within 5% (20% in half precision) of the difference at the usual step, or
    within twice the differences' own disagreement between that step and a quarter of it: near a
    kink (ReLU) the differences are the inaccurate ones, and an exact mode must not lose to them;
    a wrong or zero derivative (a custom Function without double backward) still fails, since
    there the two differences agree with each other and not with it.
    """
    probe_z = z[: min(2, z.shape[0])].detach()
    G = select_rows(G, slice(0, probe_z.shape[0]))
    gen = torch.Generator(device="cpu").manual_seed(_PROBE_SEED)
    v = torch.randn(probe_z.shape, generator=gen, dtype=torch.float64).to(z)
    v = v / v.norm(dim=-1, keepdim=True)
    h = JacobianOperator(G, probe_z, 1, "finite_difference")._fd_step()
    reference = _central_difference(G, probe_z, v, h)
    spread = float((reference - _central_difference(G, probe_z, v, h / 4)).norm())
    ref_norm = float(reference.norm())
    tol = 0.05 if z.dtype in (torch.float32, torch.float64) else 0.2
    for mode in _EXACT_MODES:
        if mode == "forward" and not supports_forward_ad(select_rows(G, slice(0, 1)), probe_z):
            continue
        try:
            exact = JacobianOperator(G, probe_z, 1, mode).jvp(v[:, None, :]).detach().double().reshape(reference.shape)
        except RuntimeError:
            continue
        if not torch.isfinite(exact).all():
            continue
        gap = float((exact - reference).norm())
        if gap <= max(tol * ref_norm, 2 * spread) or ref_norm == 0 == float(exact.norm()):
            return mode
    return "finite_difference"


def _cache_slot(G: Callable, modules: list[nn.Module], z: torch.Tensor, jvp: str | tuple):
    anchor, extra = generator_identity(G, modules)
    modes = tuple(m.training for root in modules for m in root.modules())
    key = (extra, z.dtype, z.device.type, modes, jvp)
    try:
        slot = _probe_cache.setdefault(anchor, {})
    except TypeError:  # not weakly referenceable: probe every call
        slot = {}
    return slot, key


_warned: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()


def _warn_once(anchor: object, extra: object, message: str) -> None:
    try:
        said = _warned.setdefault(anchor, set())
    except TypeError:  # not weakly referenceable (__slots__ without __weakref__): once per its type
        said = _warned.setdefault(type(anchor), set())
    if (extra, message) not in said:
        said.add((extra, message))
        warnings.warn(message, UserWarning, stacklevel=6)  # the caller of the entry point


def _probed_mode(G: Callable, z: torch.Tensor, jvp: str) -> str:
    """The probe's forwards: G is a function of z (`check_function_of_z`), supports forward-mode AD
    where jvp="forward" asks for it, and jvp="auto" resolves to a mode (`_verify_auto`)."""
    check_function_of_z(G, z)
    if jvp == "forward" and not supports_forward_ad(select_rows(G, slice(0, 1)), z):
        raise ValueError(
            "jvp='forward' needs forward-mode AD, which G does not support; "
            "use jvp='double_backward' or 'finite_difference'"
        )
    return _verify_auto(G, z) if jvp == "auto" else jvp


def _unseen_state(G: Callable, modules: list[nn.Module], new: list[nn.Module], missed: bool) -> str | None:
    """The warning for state of G the guarantees may not cover, or None: modules G ran that the
    scan did not find (`new`), or no module found where the scan may have missed some."""
    if new:
        return (
            f"G runs modules spectral_ops did not find among the objects G holds "
            f"({', '.join(sorted({type(m).__name__ for m in new})[:4])}): their buffers are kept and the "
            "BatchNorm policy applies as found by running G once, but the dtype check does not, and "
            "another module behind the same G would go unseen; hold G's modules in attributes, closures, "
            "dicts or lists (or pass the module)"
        )
    if not modules and missed:
        return (
            f"spectral_ops found no nn.Module behind G (a {type(user_generator(G)).__name__}) and could not "
            "look into everything it holds: the guarantee that the extra passes leave G's buffers as found "
            "does not apply to state it cannot see"
        )
    return None


def probe(G: Callable, z: torch.Tensor, jvp: str, modules: list[nn.Module] | None = None) -> str:
    """Check G once per generator (see module docstring) and resolve jvp="auto"; z is [B, d]."""
    return probe_modules(G, z, jvp, modules)[0]


def probe_modules(
    G: Callable,
    z: torch.Tensor,
    jvp: str,
    modules: list[nn.Module] | None = None,
    batchnorm: str = "error",
    missed: bool = False,
) -> tuple[str, list[nn.Module]]:
    """`probe`, and the modules G runs: those of `modules` (the scan's) it ran a submodule of, and
    those it ran that no module of `modules` holds (cached with the probe, as weak references).

    The probe's forwards run under `guards.ProbeGuard`: a refused probe leaves every parameter and
    buffer as found, train-mode BatchNorm is refused (or put in eval mode) before it runs, and a
    G that changes its own parameters when called is refused (they are put back).  missed:
    whether the scan may have missed modules (`scan`); with none found either way, a warning
    (once per generator) says that the state guarantee covers no state of G.
    """
    if jvp not in JVP_MODES:
        raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
    modules = modules_of(G) if modules is None else modules
    slot, key = _cache_slot(G, modules, z, jvp)
    if key in slot:
        ran = [r() for r in slot.get(("ran", key), ())]
        if all(m is not None for m in ran):
            return slot[key], ran
        # a module this entry saw is gone, and the key holds module ids, which a new module may
        # reuse: probe again (else that module would run without the BatchNorm policy and the guarantee)
    guard = ProbeGuard(modules, batchnorm)
    handle = nn.modules.module.register_module_forward_pre_hook(guard.pre_hook)
    error = None
    try:
        mode = _probed_mode(G, z, jvp)
    except Exception as e:  # noqa: BLE001  re-raised below, after G's state is put back
        error = e
    finally:
        handle.remove()
        changed = guard.restore()
    if changed:
        raise ValueError(
            f"G changed its own parameters when called ({', '.join(changed[:4])}): spectral_ops put them back as "
            "it found them, but a G whose forward changes its parameters is not a function of z.  Move "
            "that update out of G's forward (into the training step)."
        ) from error
    if error is not None:
        raise error
    ran = guard.ran()
    unseen = _unseen_state(G, modules, guard.extra, missed)
    if unseen is not None:
        _warn_once(*generator_identity(G, modules), unseen)
    slot[key] = mode
    slot[("ran", key)] = [weakref.ref(m) for m in ran]
    return mode, ran


_T = TypeVar("_T")


def measured(
    G: Callable, z: torch.Tensor, name: tuple, measure: Callable[[], _T], modules: list[nn.Module] | None = None
) -> _T:
    """measure() once per generator, stored with the JVP-mode probe: the same cache key (G's
    identity, z's dtype and device type, the modes of G's modules) plus `name` (a tuple saying
    what is measured, e.g. ("costs", mode, d)).  z is [B, d]; G is the callable `prepared` yields."""
    modules = modules_of(G) if modules is None else modules
    slot, key = _cache_slot(G, modules, z, ("measured",) + tuple(name))
    if key not in slot:
        slot[key] = measure()
    return slot[key]


__all__ = ["probe", "probe_modules", "check_function_of_z", "measured"]
