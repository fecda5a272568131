"""Which nn.Modules G is made of, and G's identity for the per-generator caches.

G need not be a module: a lambda, a `functools.partial`, a bound method, a callable object or a
plain function.  `scan` finds the modules it reaches: its closure, its arguments, the globals it
names, the attributes of the objects among them (a trainer's loss object holding G_mapping and
G_synthesis) and the dicts, lists and namespaces among those; bounded (SCAN_DEPTH links,
SCAN_OBJECTS objects, SCAN_ITEMS items per container), cycle-safe, and it says when it may have
missed some.  `generator_identity` keys the probe's cache (probes.py): the same code on the same
modules is the same generator, also for a lambda or partial created anew on every call.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import types

import torch
from torch import nn

from .jacobian import unwrap
from .latents import FlatGenerator


def _function_refs(fn: types.FunctionType) -> tuple[list[object], list[object]]:
    """(the values of fn's closure cells, the globals its code names)."""
    cells = []
    for cell in fn.__closure__ or ():
        with contextlib.suppress(ValueError):  # an empty cell
            cells.append(cell.cell_contents)
    return cells, [fn.__globals__[n] for n in fn.__code__.co_names if n in fn.__globals__]


def _parts(G: object) -> tuple[object | None, list[object]]:
    """(code or object that identifies G's computation, the objects it closes over)."""
    if isinstance(G, FlatGenerator):
        return None, [G.G, *G.kwargs.values()]
    if isinstance(G, functools.partial):
        return None, [G.func, *G.args, *G.keywords.values()]
    if isinstance(G, types.MethodType):
        return G.__func__.__code__, [G.__self__]
    if isinstance(G, types.FunctionType):
        cells, named = _function_refs(G)
        return G.__code__, cells + [g for g in named if isinstance(g, nn.Module)]  # globals: modules only
    return None, []


SCAN_DEPTH = 5  # links followed from G: lambda -> closure cell -> trainer object -> dict -> module
SCAN_OBJECTS = 1000  # objects looked at per scan (a trainer's attributes, not the whole program)
SCAN_ITEMS = 256  # items looked at per container
# objects that hold no module and are not looked into
_LEAVES = (
    torch.Tensor,
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    bool,
    type(None),
    types.ModuleType,
    type,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.CodeType,
    torch.dtype,
    torch.device,
    torch.Generator,
    range,
    slice,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
)


# packages whose functions and objects hold no user module: not looked into (a G that calls
# torch.nn.functional.relu must not walk through torch's internals)
_LIBRARIES = ("torch", "numpy", "spectral_ops", "typing", "abc", "enum", "logging", "threading", "warnings")


def _library_object(obj: object) -> bool:
    where = obj.__module__ if isinstance(obj, (types.FunctionType, types.MethodType)) else type(obj).__module__
    return isinstance(where, str) and where.split(".")[0] in _LIBRARIES


def _slots(obj: object) -> list[object]:
    """The values of obj's __slots__ (all classes of its MRO), but __dict__ and __weakref__."""
    out = []
    for cls in type(obj).__mro__:
        names = getattr(cls, "__slots__", ())
        for name in (names,) if isinstance(names, str) else names if isinstance(names, (tuple, list)) else ():
            if name not in ("__dict__", "__weakref__"):
                with contextlib.suppress(AttributeError, TypeError):
                    out.append(getattr(obj, name))
    return out


def _held(obj: object) -> tuple[list[object], bool]:
    """(the objects obj holds that may lead to modules, whether obj is a callable spectral_ops
    cannot look into).  Functions: closure cells and the globals they name (not Python modules or
    classes); methods: the function and the object bound; partials: function and arguments;
    containers: their items; other objects: their attributes (__dict__ and __slots__).  Objects
    of torch, numpy and a few standard modules (`_LIBRARIES`) hold nothing here."""
    if isinstance(obj, FlatGenerator):
        return [obj.G, *obj.kwargs.values()], False
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()], False
    if isinstance(obj, dict):
        return list(itertools.islice(obj.values(), SCAN_ITEMS)), False
    if isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        return list(itertools.islice(obj, SCAN_ITEMS)), False
    if _library_object(obj):
        return [], False
    if isinstance(obj, types.MethodType):
        return [obj.__func__, obj.__self__], False
    if isinstance(obj, types.FunctionType):
        cells, named = _function_refs(obj)
        return cells + named, False
    attrs = getattr(obj, "__dict__", None)
    held = list(itertools.islice(attrs.values(), SCAN_ITEMS)) if isinstance(attrs, dict) else []
    held += _slots(obj)
    return held, callable(obj) and not held


def scan(G: object, depth: int = SCAN_DEPTH) -> tuple[list[nn.Module], bool]:
    """(the nn.Modules G reaches, whether the scan may have missed some).

    Breadth first from G through `_held` links, up to `depth` links and SCAN_OBJECTS objects,
    each object once (cycle-safe).  A module ends its branch (its submodules are its own).
    "May have missed": the scan stopped at a limit, or met a callable it cannot look into.
    """
    G = unwrap(G)
    if isinstance(G, nn.Module):
        return [G], False
    found: dict[int, nn.Module] = {}
    seen, frontier, missed = {id(G)}, [G], False
    for level in range(depth + 1):
        nxt = []
        for obj in frontier:
            if isinstance(obj, nn.Module):
                found.setdefault(id(unwrap(obj)), unwrap(obj))
                continue
            if level == depth:  # not looked into: say so if it may hold something
                missed |= bool(_held(obj)[0])
                continue
            held, opaque = _held(obj)
            missed |= opaque
            for h in held:
                if not isinstance(h, _LEAVES) and id(h) not in seen:
                    seen.add(id(h))
                    nxt.append(h)
            if len(seen) > SCAN_OBJECTS:
                return list(found.values()), True
        frontier = nxt
    return list(found.values()), missed


def modules_of(G: object, depth: int = SCAN_DEPTH) -> list[nn.Module]:
    """The nn.Modules that make up G: G itself, or the modules a function, partial, bound method
    or callable object reaches through its closure, the globals it names, its arguments, its
    attributes and the dicts, lists and namespaces among them (see `scan`)."""
    return scan(G, depth)[0]


def generator_identity(G: object, modules: list[nn.Module] | None = None) -> tuple[object, tuple]:
    """(anchor, extra): the same code on the same modules gives the same identity, also for a
    lambda or partial created anew on every call.  anchor is weakly referenceable."""
    options: tuple
    G, options = unwrap(G), ()
    while isinstance(G, FlatGenerator):
        options += (G.latent_shape, _simple(G.kwargs.items()))
        G = unwrap(G.G)
    if isinstance(G, nn.Module):
        return G, options
    options += (_simple(_parts(G)[1]),)
    mods = tuple(id(m) for m in (modules_of(G) if modules is None else modules))
    f = G
    while isinstance(f, functools.partial):
        f = unwrap(f.func)
    if isinstance(f, types.MethodType):
        f = f.__func__
    anchor = f.__code__ if isinstance(f, types.FunctionType) else f
    return anchor, (options, type(G).__name__, mods)


def user_generator(G: object) -> object:
    """The user's G inside the library's `FlatGenerator` layers and parallel wrappers."""
    G = unwrap(G)
    while isinstance(G, FlatGenerator):
        G = unwrap(G.G)
    return G


def _simple(values) -> tuple:
    """The plain constants (str, int, float, bool, None) among values: part of G's identity."""
    plain = (str, int, float, bool, type(None))
    return tuple(
        v for v in values if isinstance(v, plain) or (isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], plain))
    )


__all__ = ["SCAN_DEPTH", "SCAN_OBJECTS", "SCAN_ITEMS", "scan", "modules_of", "generator_identity", "user_generator"]
