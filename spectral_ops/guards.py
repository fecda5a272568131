"""G's state around the library's extra passes: the dtype check, the BatchNorm policy, and the
buffers (and, around the probe, the parameters) put back as found.

- `check_dtype`: z's dtype must be the dtype of G's floating parameters (when they share one).
- `batch_policy`: train-mode BatchNorm is refused (batchnorm="error") or run in eval mode
  meanwhile (batchnorm="eval"); `prepared` applies it to the modules G runs, so a module on the
  trainer object that G never runs (a discriminator) is left alone.
- `preserved_buffers`: every buffer of those modules is left exactly as found (BatchNorm running
  statistics, `num_batches_tracked`, a style generator's `w_avg`): buffers the extra passes
  changed are copied back afterwards.
- `ProbeGuard`: the same around the one-off probe (probes.py), before the modules G runs are
  known: every parameter and buffer of the scan's modules, and of any module G runs that the scan
  missed (met by a global forward pre-hook before it runs), is put back afterwards, so a refused
  call changes nothing; train-mode BatchNorm is refused or put in eval mode before it runs; the
  parameters G changed are named, for the probe to refuse such a G.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from .holders import modules_of


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


class ProbeGuard:
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


__all__ = ["check_dtype", "batch_policy", "preserved_buffers", "ProbeGuard"]
