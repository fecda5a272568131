"""How spectral_ops calls a user's generator: the checks and guarantees around every extra pass.

Every public entry point (`jacobian_topk`, `spectral_penalty`, `SpectralRegularizer`,
`trace_trajectory`) runs its generator passes inside `prepared(G, z, ...)`, which

- accepts latents of any shape (B, ...): the latent is the flattened trailing dims, d =
  prod(z.shape[1:]), and G is called on z reshaped back (`FlatGenerator`); results come back in
  the flat layout, e.g. vectors [B, k, d] (`vectors.reshape(B, k, *z.shape[1:])` for G's shape);
- finds the nn.Modules G is made of, also when G is a lambda, a `functools.partial`, a bound
  method, a callable object or a plain function: its closure, its arguments, the globals it
  names, the attributes of the objects among them (a trainer's loss object holding G_mapping and
  G_synthesis) and the dicts, lists and namespaces among those (`scan`: bounded, cycle-safe);
- runs the one-off probe under `_ProbeGuard`: every parameter and buffer of those modules, and
  of any module G runs that the scan missed (met by a global forward pre-hook before it runs),
  is put back afterwards, so a refused call changes nothing; train-mode BatchNorm is refused or
  put in eval mode before it runs; a G that changes its own parameters is refused;
- applies the BatchNorm policy and the buffer guarantee to the modules G runs (a module on the
  trainer object that G never runs, a discriminator, is left alone), and warns once per
  generator where it finds none and cannot look into all G holds;
- leaves every buffer of those modules exactly as it found it (BatchNorm running statistics,
  `num_batches_tracked`, a style generator's `w_avg`): buffers the extra passes changed are
  copied back afterwards;
- hands G a copy of its input on every call (`FlatGenerator`), so a G that writes to its input
  (x.clamp_) works as G(z) does and never changes z;
- probes G once (cached per generator, see `generator_identity`) on two-row batches: that it
  returns one row per latent, that G(z) is a function of z (two identical calls agree: no random
  noise inputs, no train-mode Dropout), that a row's output does not depend on its batch-mates
  (BatchNorm behind a function the module scan cannot see), and, for jvp="auto", which exact
  JVP mode agrees with a central difference.  `measured` keeps other per-generator measurements
  (the product costs `jacobian_topk(method="auto")` times) in the same cache.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import types
import warnings
import weakref
from typing import Callable, Iterator, TypeVar, cast

import torch
from torch import nn

from .jacobian import (
    JVP_MODES,
    PER_ROW_HINT,
    FoldableGenerator,
    JacobianOperator,
    check_output_rows,
    module_call,
    name_rows,
    raise_per_row_hint,
    supports_forward_ad,
    unwrap,
)

_EXACT_MODES = ("double_backward", "forward")
_PROBE_SEED = 1234

# generator identity anchor (weakly held) -> {key: JVP mode that passed the probe, or what
# `measured` stored (jacobian_topk's timed product costs for method="auto")}
_probe_cache: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


# ---- latents ------------------------------------------------------------------------------------
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


# ---- what G is made of --------------------------------------------------------------------------
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


def _inner(G: object) -> object:
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


def _param_dtype(modules: list[nn.Module]) -> torch.dtype | None:
    dtypes = {p.dtype for m in modules for p in m.parameters() if p.dtype.is_floating_point}
    return dtypes.pop() if len(dtypes) == 1 else None


def check_dtype(modules: list[nn.Module], z: torch.Tensor, name: str = "z") -> None:
    """z's dtype must be the dtype of G's floating parameters (when they share one)."""
    dtype = _param_dtype(modules)
    if dtype is not None and z.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {z.dtype} but G's parameters are {dtype}: pass {name}.to({dtype}) "
            f"(or convert G with .to({z.dtype}))"
        )


# ---- the state of G -----------------------------------------------------------------------------
def _train_mode_batchnorms(modules: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    out = {}
    for root in modules:
        for name, m in root.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                out[id(m)] = (name or type(m).__name__, m)
    return list(out.values())


def _batchnorm_refusal(coupled: list[tuple[str, nn.Module]]) -> str:
    return (
        f"G has batch-coupled layers in training mode ({', '.join(n for n, _ in coupled[:4])}): per-sample "
        "Jacobians are undefined when rows of a batch interact.  Pass batchnorm='eval' to use "
        "their running statistics during the extra passes, or put G in eval mode."
    )


@contextlib.contextmanager
def batch_policy(G: Callable, batchnorm: str, modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Refuse G's train-mode BatchNorm layers, or run them in eval mode meanwhile.
    modules: G's modules, if the caller already has them (`modules_of`)."""
    if batchnorm not in ("error", "eval"):
        raise ValueError(f"batchnorm must be 'error' or 'eval', got {batchnorm!r}")
    coupled = _train_mode_batchnorms(modules_of(G) if modules is None else modules)
    if coupled and batchnorm == "error":
        raise ValueError(_batchnorm_refusal(coupled))
    for _, m in coupled:
        m.eval()
    try:
        yield
    finally:
        for _, m in coupled:
            m.train()


@contextlib.contextmanager
def preserved_buffers(G: Callable, modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Copy back, on exit, every buffer of G's modules that changed meanwhile (in-place updates).

    Only buffers of submodules in training mode are copied on entry: those are the ones a forward
    updates (BatchNorm statistics, a mapping network's running w_avg); a submodule in eval mode
    that changes a buffer anyway is named in a warning on exit, since it cannot be restored.
    """
    roots = modules_of(G) if modules is None else modules
    saved: dict[int, tuple[torch.Tensor, int, torch.Tensor]]  # id -> (buffer, version, copy)
    watched: dict[int, tuple[str, torch.Tensor, int]]  # id -> (name, buffer, version)
    saved, watched = {}, {}
    for root in roots:
        for name, m in root.named_modules():
            for bname, b in m.named_buffers(recurse=False):
                if m.training:
                    saved.setdefault(id(b), (b, b._version, b.detach().clone()))
                else:
                    watched.setdefault(id(b), (f"{name}.{bname}" if name else bname, b, b._version))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, version, value in saved.values():
                if b._version != version:
                    b.copy_(value)
        changed = [n for i, (n, b, version) in watched.items() if i not in saved and b._version != version]
        if changed:
            warnings.warn(
                f"G changed buffers of modules in eval mode during spectral_ops' extra passes "
                f"({', '.join(changed[:4])}); only training-mode modules' buffers are restored",
                UserWarning,
                stacklevel=3,
            )


# ---- the probe ----------------------------------------------------------------------------------
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


class _ProbeGuard:
    """The state of G around the one-off probe, and the modules G runs.

    Every parameter and buffer of the scan's modules (`roots`) is copied on entry, and those of a
    module G runs that no root holds (met by a global forward pre-hook before it runs) on first
    sight; `restore` puts back what changed.  The first time G runs a module of a root, that
    root's train-mode BatchNorm layers are refused or put in eval mode by `batchnorm`, before
    they run: a root G never runs (a discriminator on the trainer object G is a method of) is left
    alone, here and in the passes (`ran`).
    """

    def __init__(self, roots: list[nn.Module], batchnorm: str):
        self.batchnorm, self.roots = batchnorm, list(roots)
        self.root_of = {id(m): i for i, r in enumerate(self.roots) for m in r.modules()}
        self.entered: set[int] = set()  # indices of the roots G ran
        self.saved: dict[int, tuple[str, torch.Tensor, torch.Tensor, bool]] = {}
        self.extra: list[nn.Module] = []
        self.switched: list[nn.Module] = []
        for r in roots:
            self._save(r)

    def _save(self, root: nn.Module) -> None:
        with torch.no_grad():
            for name, p in root.named_parameters():
                self.saved.setdefault(id(p), (name, p, p.detach().clone(), True))
            for name, b in root.named_buffers():
                self.saved.setdefault(id(b), (name, b, b.detach().clone(), False))

    def pre_hook(self, module: nn.Module, args) -> None:
        i = self.root_of.get(id(module))
        if i is None:  # a module no root holds: a new root
            i = len(self.roots)
            self.roots.append(module)
            self.extra.append(module)
            self.root_of.update((id(m), i) for m in module.modules())
            self._save(module)
        if i in self.entered:
            return
        self.entered.add(i)
        coupled = _train_mode_batchnorms([self.roots[i]])
        if coupled and self.batchnorm == "error":
            raise ValueError(_batchnorm_refusal(coupled))  # before the layers update their statistics
        for _, m in coupled:
            m.eval()
            self.switched.append(m)

    def ran(self) -> list[nn.Module]:
        """The roots G ran a module of (scan's and new)."""
        return [r for i, r in enumerate(self.roots) if i in self.entered]

    def restore(self) -> list[str]:
        """Put back what changed; return the names of the parameters G changed."""
        changed = []
        with torch.no_grad():
            for name, t, value, is_param in self.saved.values():
                if not _same(t, value):
                    with contextlib.suppress(RuntimeError):  # a tensor G resized cannot be copied into
                        t.copy_(value)
                    if is_param:
                        changed.append(name)
        for m in self.switched:
            m.train()
        return changed


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (NaN equal to NaN) and shape; meta tensors (no values) are equal by shape."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return a.device == b.device
    if torch.equal(a, b):
        return True
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b)) if a.is_floating_point() else (a == b)).all())


_warned: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()


def _warn_once(anchor: object, extra: object, message: str) -> None:
    try:
        said = _warned.setdefault(anchor, set())
    except TypeError:  # not weakly referenceable (__slots__ without __weakref__): once per its type
        said = _warned.setdefault(type(anchor), set())
    if (extra, message) not in said:
        said.add((extra, message))
        warnings.warn(message, UserWarning, stacklevel=6)  # the caller of the entry point


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

    The probe's forwards run under `_ProbeGuard`: a refused probe leaves every parameter and
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
    guard = _ProbeGuard(modules, batchnorm)
    handle = nn.modules.module.register_module_forward_pre_hook(guard.pre_hook)
    error = None
    try:
        check_function_of_z(G, z)
        if jvp == "forward" and not supports_forward_ad(select_rows(G, slice(0, 1)), z):
            raise ValueError(
                "jvp='forward' needs forward-mode AD, which G does not support; "
                "use jvp='double_backward' or 'finite_difference'"
            )
        mode = _verify_auto(G, z) if jvp == "auto" else jvp
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
    new, ran = guard.extra, guard.ran()
    anchor, extra = generator_identity(G, modules)
    if new:
        _warn_once(
            anchor,
            extra,
            (
                f"G runs modules spectral_ops did not find among the objects G holds "
                f"({', '.join(sorted({type(m).__name__ for m in new})[:4])}): their buffers are kept and the "
                "BatchNorm policy applies as found by running G once, but the dtype check does not, and "
                "another module behind the same G would go unseen; hold G's modules in attributes, closures, "
                "dicts or lists (or pass the module)"
            ),
        )
    elif not modules and missed:
        _warn_once(
            anchor,
            extra,
            (
                f"spectral_ops found no nn.Module behind G (a {type(_inner(G)).__name__}) and could not look into "
                "everything it holds: the guarantee that the extra passes leave G's buffers as found does not "
                "apply to state it cannot see"
            ),
        )
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
