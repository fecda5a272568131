"""Fuzz harness: bad, extreme and odd inputs across spectral_ops' public API and CLI, each result
checked against a float64 explicit-Jacobian oracle (torch.autograd.functional.jacobian, then
torch.linalg.eigh / svd), never against another spectral_ops path.

    python bench/fuzz.py [--quick] [--out bench/results/fuzz.md] [--only CLASS[,CLASS]]

Every case is one call (or a few) and ends in one outcome:

- right: the numbers match the oracle within a tolerance derived from the dtype's epsilon and
  the solver's `tol`, or (cases that must be refused) nothing was asked of the library;
- clear-error: a TypeError / ValueError / RuntimeError raised from spectral_ops' own code whose
  message names the argument or the rows (each case lists the words that count);
- silent: a wrong number, a NaN or Inf, or a `converged` flag the oracle contradicts, with no error;
- state: G's parameters or buffers, the caller's tensors, the global RNG state or files changed
  by a call that must not change them (refused calls included);
- crash: any other error (from deep inside torch, or a message that names nothing).

Classes: scale, batch, dtypes, generators, holders, arguments, cli.  `--quick` runs every class
but cli (its train runs are subprocesses, ~30 s); tests/test_fuzz.py runs it and asserts 0 silent
and 0 state.  Seeds are fixed: a
rerun gives the same table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import spectral_ops
from spectral_ops import ops
from spectral_ops.baselines import hessian_penalty, jacobian_l1, orojar, path_length

PACKAGE_DIR = str(Path(spectral_ops.__file__).resolve().parent)
OUTCOMES = ("right", "clear-error", "silent", "state", "crash")
CLASSES = ("scale", "batch", "dtypes", "generators", "holders", "arguments", "cli")


# ---- outcomes ---------------------------------------------------------------------------------


class Silent(AssertionError):
    """A wrong number returned with no error."""


class StateChanged(AssertionError):
    """Something changed that the call must leave as it was."""


@dataclass
class Case:
    cls: str
    name: str
    fn: Callable[[], None]
    names: tuple[str, ...]  # words one of which a clear error's message must contain ("" none: must work)


@dataclass
class Result:
    case: Case
    outcome: str
    message: str = ""
    seconds: float = 0.0


CASES: list[Case] = []


def case(cls: str, name: str, *, names: tuple[str, ...] = ()):
    """Register fn as a case.  names: the words a clear error must contain (case-insensitive);
    empty: the call must work, so any error is a crash."""
    assert cls in CLASSES

    def register(fn):
        CASES.append(Case(cls, name, fn, names))
        return fn

    return register


def _raised_in_library(exc: BaseException) -> bool:
    """Whether the innermost frame of exc's traceback is spectral_ops' own code (not torch's)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and str(Path(last).resolve()).startswith(PACKAGE_DIR)


def classify(c: Case) -> Result:
    start = time.perf_counter()
    torch.manual_seed(1234)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ret = c.fn()
        # a fault seen out of process (the CLI): the case returns ("clear-error", what it saw)
        outcome, message = ret if isinstance(ret, tuple) else ("right", "")
    except StateChanged as exc:
        outcome, message = "state", str(exc)
    except Silent as exc:
        outcome, message = "silent", str(exc)
    except (TypeError, ValueError, RuntimeError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        lowered = str(exc).lower()
        named = any(re.search(r"(?<![a-z_])" + re.escape(word.lower()) + r"(?![a-z_])", lowered) for word in c.names)
        if c.names and named and _raised_in_library(exc):
            outcome, message = "clear-error", text
        else:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcome = "crash"
            message = text + f"  [raised at {Path(where.filename).name}:{where.lineno}]"
    except Exception as exc:  # noqa: BLE001 - anything else is a crash by definition
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outcome, message = (
            "crash",
            f"{type(exc).__name__}: {exc}  [raised at {Path(where.filename).name}:{where.lineno}]",
        )
    # a path of this machine (a temporary folder, the interpreter's) is shown by its last part
    message = re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)", r"\1", " ".join(message.split()))
    return Result(c, outcome, message[:400], time.perf_counter() - start)


# ---- state guard ------------------------------------------------------------------------------


def _files(path: Path) -> dict | None:
    """{name: bytes} of a folder's files, or of one file; None where nothing is there."""
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    return {path.name: path.read_bytes()} if path.exists() else None


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name, read anew (a call may replace one)."""
    return {name: t.detach() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def _snapshot(objs) -> dict:
    """{label: (the live object, a copy of its state)} for modules, tensors and paths."""
    snap = {}
    for i, obj in enumerate(objs):
        if isinstance(obj, nn.Module):
            state = {name: t.clone() for name, t in _tensors(obj).items()}
            snap[type(obj).__name__] = (obj, (state, [m.training for m in obj.modules()]))
        elif isinstance(obj, torch.Tensor):
            snap[f"tensor {i} {tuple(obj.shape)}"] = (obj, obj.detach().clone())
        elif isinstance(obj, Path):
            snap[f"{'folder' if obj.is_dir() else 'file'} {obj.name}"] = (obj, _files(obj))
    return snap


def _tensor_change(now: torch.Tensor, saved: torch.Tensor) -> str | None:
    """None if now equals saved (NaN where saved had NaN), else what changed."""
    if now.shape != saved.shape or now.dtype != saved.dtype:
        return f"{tuple(saved.shape)} {saved.dtype} -> {tuple(now.shape)} {now.dtype}"
    same = (now == saved) | (torch.isnan(now) & torch.isnan(saved))
    if bool(same.all()):
        return None
    return f"max change {(now.double() - saved.double()).abs().max().item():.3g}"


def _changed(snap: dict) -> list[str]:
    bad = []
    for key, (live, saved) in snap.items():
        if isinstance(live, nn.Module):
            state, flags = saved
            now = _tensors(live)
            for name in sorted(set(state) | set(now)):
                if name not in now or name not in state:
                    bad.append(f"{key}.{name} ({'removed' if name not in now else 'added'})")
                elif (what := _tensor_change(now[name], state[name])) is not None:
                    bad.append(f"{key}.{name} ({what})")
            if [m.training for m in live.modules()] != flags:
                bad.append(f"{key}: train/eval flags")
        elif isinstance(live, torch.Tensor):
            if (what := _tensor_change(live.detach(), saved)) is not None:
                bad.append(f"{key} ({what})")
        elif isinstance(live, Path):
            files = _files(live)
            if files != saved:
                before, after = set(saved or {}), set(files or {})
                what = sorted(n for n in before | after if (saved or {}).get(n) != (files or {}).get(n))
                bad.append(f"{key} ({', '.join(what)})")
    return bad


@contextlib.contextmanager
def unchanged(*objs, rng: bool = True):
    """Raise StateChanged if any module's parameters, buffers or train/eval flags, any tensor, any
    folder's files, or (rng) the global torch RNG state differ after the block, whether the block
    returned or raised (a refused call must leave state as it found it too)."""
    snap = _snapshot(objs)
    rng_state = torch.get_rng_state() if rng else None
    try:
        yield
    finally:
        bad = _changed(snap)
        if rng and not torch.equal(rng_state, torch.get_rng_state()):
            bad.append("the global torch RNG state")
        if bad:
            exc = sys.exc_info()[1]
            also = f" (the call raised {type(exc).__name__}: {exc})" if exc is not None else ""
            raise StateChanged("changed: " + "; ".join(bad) + also)


# ---- generators -------------------------------------------------------------------------------


def mlp(d: int, hidden: int, m: int, seed: int, act=nn.Tanh, dtype=torch.float32) -> nn.Module:
    """A d -> hidden -> m MLP with the given activation, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, m)).to(dtype)


class LinearG(nn.Module):
    """G(z) = z W^T with W = U diag(s) Q^T (chosen singular values, repeated ones allowed), plus a
    small tanh term (eps) that makes J vary with z while keeping near-repeated values."""

    def __init__(self, s, m: int, seed: int, eps: float = 0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        d = len(s)
        U = torch.linalg.qr(torch.randn(m, d, generator=gen, dtype=torch.float64))[0]
        Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        self.W = nn.Parameter(((U * torch.tensor(s, dtype=torch.float64)) @ Q.T).float())
        self.P = nn.Parameter((torch.randn(m, d, generator=gen, dtype=torch.float64) * eps).float())

    def forward(self, z):
        return z @ self.W.T + torch.tanh(z @ self.P.T)


class Mapping(nn.Module):
    """A style generator's mapping network: tracks w_avg in train mode (as StyleGAN2's does)."""

    def __init__(self, d: int, w: int):
        super().__init__()
        self.fc = nn.Linear(d, w)
        self.register_buffer("w_avg", torch.zeros(w))

    def forward(self, z):
        w = torch.tanh(self.fc(z))
        if self.training:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, 0.995))
        return w


class Synthesis(nn.Module):
    def __init__(self, w: int, m: int, batchnorm: bool = False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(w, 16), nn.Linear(16, m)
        self.bn = nn.BatchNorm1d(16) if batchnorm else nn.Identity()

    def forward(self, w):
        return self.fc2(torch.tanh(self.bn(self.fc1(w))))


class StyleLoss:
    """Holds G as StyleGAN2's StyleGAN2Loss does: attributes G_mapping and G_synthesis."""

    def __init__(self, G_mapping, G_synthesis):
        self.G_mapping, self.G_synthesis = G_mapping, G_synthesis

    def run_G(self, z):
        return self.G_synthesis(self.G_mapping(z))


class Wrapper:
    """A plain callable object around a module."""

    def __init__(self, m):
        self.m = m

    def __call__(self, x):
        return self.m(x)


class Both(nn.Module):
    def __init__(self, mapping, synthesis):
        super().__init__()
        self.mapping, self.synthesis = mapping, synthesis

    def forward(self, z):
        return self.synthesis(self.mapping(z))


def style_pair(d=6, w=8, m=10, batchnorm=False, seed=0, train=True):
    torch.manual_seed(seed)
    mapping, synthesis = Mapping(d, w), Synthesis(w, m, batchnorm)
    with torch.no_grad():  # a w_avg that is not zero, and BatchNorm statistics that are not the defaults
        mapping.w_avg.copy_(torch.randn(w) * 0.1)
        if batchnorm:
            synthesis.bn.running_mean.copy_(torch.randn(16) * 0.1)
            synthesis.bn.running_var.copy_(torch.rand(16) + 0.5)
    mapping.train(train)
    synthesis.train(train)
    return mapping, synthesis


# ---- oracle -----------------------------------------------------------------------------------


def as_float64(G: Callable, modules) -> Callable:
    """A float64 copy of G: deep copies of its modules (so the oracle changes nothing of the
    caller's) in float64, called through the same holder shape."""
    copies = {id(mod): copy.deepcopy(mod).double() for mod in modules}
    for mod in copies.values():
        for sub in mod.modules():  # the oracle evaluates the function, with BatchNorm as the call uses it
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.eval()
    return copies


def jacobian64(f: Callable, z: torch.Tensor) -> torch.Tensor:
    """[B, m, d] per-row Jacobians of a row-independent f at z, in float64.  The rows do not
    couple, so the Jacobian of sum_b f(z)_b w.r.t. z [B, d] is J_b in row b."""
    z = z.detach().double().reshape(z.shape[0], -1)
    B = z.shape[0]
    J = torch.autograd.functional.jacobian(lambda x: f(x).reshape(B, -1).sum(0), z, vectorize=True)
    return J.permute(1, 0, 2)  # [m, B, d] -> [B, m, d]


@dataclass
class Oracle:
    lam: torch.Tensor  # [B, d] eigenvalues of J^T J, descending
    V: torch.Tensor  # [B, d, d] rows: eigenvectors
    M: torch.Tensor  # [B, d, d] J^T J


def oracle(f64: Callable, z: torch.Tensor, scale: float = 1.0) -> Oracle:
    J = jacobian64(f64, z) * scale
    M = J.transpose(1, 2) @ J
    lam, vec = torch.linalg.eigh(M)
    return Oracle(lam.flip(-1).clamp_min(0), vec.flip(-1).transpose(1, 2), M)


def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def check_topk(
    top, orc: Oracle, k: int, tol: float, dtype: torch.dtype, what: str = "", must_converge: bool = False
) -> None:
    """Raise Silent where the result contradicts the oracle: a non-finite entry, vectors that are
    not orthonormal, or a vector marked converged whose residual against the exact M exceeds tol
    (with a slack of 16 eps of the dtype for rounding the vectors), or whose value is not the
    oracle's i-th eigenvalue within its residual (a skipped eigenvalue).  Rows marked unconverged
    are an honest report and are not checked against the oracle; where the case is well within the
    solver's budget (must_converge), an unconverged row is a failure to do the job: a crash."""
    V = top.vectors.detach().double().reshape(top.vectors.shape[0], k, -1)
    s = top.values.detach().double()
    if not (torch.isfinite(V).all() and torch.isfinite(s).all()):
        raise Silent(f"{what}non-finite vectors or values with no error")
    slack = 16 * eps_of(dtype)
    gram = V @ V.transpose(1, 2)
    err = (gram - torch.eye(k, dtype=gram.dtype)).abs().max().item()
    if err > 4 * V.shape[-1] * eps_of(dtype):  # a dot product of d rounded entries: d eps
        raise Silent(f"{what}vectors not orthonormal (|V V^T - I| = {err:.3g})")
    lam1 = orc.lam[:, :1]
    conv = top.converged.detach().cpu().bool()
    if must_converge and not bool(conv.all()):
        raise RuntimeError(
            f"{what}unconverged: {int((~conv).any(-1).sum())} of {conv.shape[0]} rows flagged "
            f"unconverged within the budget (no error raised)"
        )
    if tol == 0 and bool(conv.any()):
        raise Silent(f"{what}tol=0 and {int(conv.sum())} vectors reported converged (residual < 0 is impossible)")
    lam_ret = s * s
    MV = V @ orc.M  # rows of V times symmetric M
    res = (MV - lam_ret[..., None] * V).norm(dim=-1) / lam1.clamp_min(1e-300)
    res = torch.where(lam1 > 0, res, torch.zeros_like(res))
    limit = 1.1 * tol + slack
    bad_res = conv & (res > limit)
    if bool(bad_res.any()):
        b, i = bad_res.nonzero()[0].tolist()
        raise Silent(
            f"{what}row {b} vector {i} reported converged with residual {res[b, i]:.3g} against the exact "
            f"operator (tol {tol:g}); {int(bad_res.sum())} such vectors"
        )
    # values: the i-th returned eigenvalue is the oracle's i-th within the residual bound
    verr = (lam_ret - orc.lam[:, :k]).abs() / lam1.clamp_min(1e-300)
    verr = torch.where(lam1 > 0, verr, lam_ret.abs())
    bad_val = conv & (verr > torch.maximum(res, torch.full_like(res, tol)) * 1.1 + slack)
    if bool(bad_val.any()):
        b, i = bad_val.nonzero()[0].tolist()
        raise Silent(
            f"{what}row {b}: sigma^2 {[round(x, 6) for x in lam_ret[b].tolist()]} where the oracle's "
            f"top-{k + 1} are {[round(x, 6) for x in orc.lam[b, : k + 1].tolist()]} (vector {i} converged, "
            f"error {verr[b, i]:.3g} of lambda_1); "
            f"{int(bad_val.any(-1).sum())} rows"
        )


def check_finite(x, what: str) -> None:
    if isinstance(x, torch.Tensor) and not bool(torch.isfinite(x.detach()).all()):
        raise Silent(f"{what} is not finite ({x.detach().flatten()[:4].tolist()}) with no error")


# The alignment loss, written from its definition (README, "The regularizer"), in float64.


def loss_oracle(V: torch.Tensor, S: torch.Tensor, kind: str, weights: str) -> torch.Tensor:
    """Per-sample alignment loss [B] of rows V [B, k, d] with singular values S [B, k]."""
    V, S = V.double(), S.double()
    B, k, d = V.shape
    if kind == "offdiag":
        A = (V.transpose(1, 2) * (S * S)[:, None, :]) @ V  # sum_i s_i^2 v_i v_i^T
        fro2 = (A * A).sum((1, 2))
        diag2 = (torch.diagonal(A, dim1=1, dim2=2) ** 2).sum(-1)
        return torch.where(fro2 > 0, (fro2 - diag2) / torch.where(fro2 > 0, fro2, 1.0), 0.0)
    if weights == "uniform":
        w = torch.full_like(S, 1.0 / k)
    else:
        total = S.sum(-1, keepdim=True)
        w = torch.where(total > 0, S / torch.where(total > 0, total, 1.0), 1.0 / k)
    if kind == "l1":
        per = (V.abs().sum(-1) - 1) / (math.sqrt(d) - 1) if d > 1 else torch.zeros_like(S)
    else:
        idx = torch.arange(k)
        per = 1 - V[:, idx, idx] ** 2
    return (w * per).sum(-1)


def penalty_oracle(
    orc: Oracle, k: int, loss: str = "offdiag", weights: str = "uniform", null_tol: float = 1e-3, tol: float = 1e-4
) -> tuple[float, float]:
    """(the penalty spectral_penalty defines, a tolerance): the batch mean of the alignment loss of
    the oracle's top-k eigenvectors; vectors with sigma_i <= null_tol sigma_1 weigh zero; offdiag
    with uniform weights uses the fixed rank weights sqrt((k - i + 1) / k).  The tolerance is what a
    residual of `tol` (relative to lambda_1) moves the vectors by, tol lambda_1 / gap, times 8."""
    lam, V = orc.lam, orc.V[:, :k]
    sig = lam[:, :k].sqrt()
    active = (sig > null_tol * sig[:, :1]) & (sig[:, :1] > 0)
    if loss == "offdiag":
        S = sig if weights == "singular" else (torch.arange(k, 0, -1, dtype=torch.float64) / k).sqrt().expand_as(sig)
        S, w = S * active, weights
    else:
        S = (sig if weights == "singular" else torch.ones_like(sig)) * active
        w = "singular"
    value = loss_oracle(V, S, loss, w).mean().item()
    gaps = (lam[:, :k] - lam[:, 1 : k + 1]) if lam.shape[1] > k else (lam[:, : k - 1] - lam[:, 1:k])
    gap = gaps[:, : max(1, int(active.sum(-1).min()))].min().item() if gaps.numel() else lam[:, 0].min().item()
    return value, 8 * tol * lam[:, 0].max().item() / max(gap, 1e-300) + 64 * eps_of(torch.float32)


def grads(G_params, value: torch.Tensor) -> torch.Tensor:
    g = torch.autograd.grad(value, G_params, allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().double() for x, p in zip(g, G_params)])


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def latents(B: int, d: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---- class: scale -----------------------------------------------------------------------------

SCALES_TOPK = (1e-40, 1e-30, 1e-25, 1e-12, 1.0, 1e10, 1e20, 1e30, 1e38)
SCALES_PENALTY = (1e-40, 1e-25, 1e-12, 1e10, 1e20, 1e30)
SCALES_S = (1e-30, 1e-15, 1e-8, 1.0, 1e8, 1e15, 1e30)


def _scale_topk(method: str, c: float, tol: float = 1e-4):
    net = mlp(6, 10, 12, seed=0)
    z = latents(8, 6, seed=2)
    orc = oracle(as_float64(net, [net])[id(net)], z, scale=c)
    G = lambda x: c * net(x)
    with unchanged(net, z):
        top = spectral_ops.jacobian_topk(G, z, 3, method=method, tol=tol, iters=500 if method == "power" else 60)
    # float32 output c*y is subnormal below ~1e-38 / |y|: its spacing is the smallest subnormal,
    # so the Jacobian carries a relative error of about that spacing / (c |J|)
    sub = torch.finfo(torch.float32).smallest_normal * eps_of(torch.float32) / (c * orc.lam[:, 0].min().sqrt().item())
    check_topk(top, orc, 3, tol + 8 * math.sqrt(12) * sub, torch.float32, f"c={c:g}: ", must_converge=True)


for _m in ("power", "krylov", "dense"):
    for _c in SCALES_TOPK:
        case("scale", f"jacobian_topk method={_m} G scaled by {_c:g}")(functools.partial(_scale_topk, _m, _c))


GAPPED = (1.0, 0.6, 0.35, 0.2, 0.1, 0.05)  # singular values of a G whose top-3 gaps keep the loss well conditioned
PENALTY_TOL = 1e-6


def _penalty_scaled(c: float, weights: str, regularizer: bool, loss: str = "offdiag"):
    net = LinearG(GAPPED, 10, 3, eps=0.05)
    z = latents(6, 6, seed=4)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    want, tol_value = penalty_oracle(orc, 3, loss, weights, tol=PENALTY_TOL)
    params = list(net.parameters())

    def run(scale):
        G = (lambda x: scale * net(x)) if scale != 1.0 else net
        if regularizer:
            reg = spectral_ops.SpectralRegularizer(
                6,
                k=3,
                loss=loss,
                weights=weights,
                every=1,
                batch_fraction=1.0,
                warm_start=False,
                tol=PENALTY_TOL,
                iters=20,
            )
            return reg(G, z), reg
        return spectral_ops.spectral_penalty(G, z, k=3, loss=loss, weights=weights, tol=PENALTY_TOL, iters=20), None

    with unchanged(net, z):
        value, reg = run(c)
    check_finite(value, "penalty")
    if abs(value.item() - want) > tol_value:
        raise Silent(f"penalty {value.item():.6g} at scale {c:g}, oracle {want:.6g} (tol {tol_value:.2g})")
    if reg is not None:
        got = reg.last_values.double()
        want_s = orc.lam[:, :3].sqrt() * c
        err = ((got - want_s).abs() / want_s[:, :1]).max().item()
        if not err < 1e-3:
            raise Silent(f"last_values off the oracle's sigma * {c:g} by {err:.3g} of sigma_1")
    g_scaled = grads(params, value)
    check_finite(g_scaled, "the penalty's gradient")
    g_unit = grads(params, run(1.0)[0])
    # the loss is scale-free, so is its gradient w.r.t. theta; both are solved to PENALTY_TOL
    if rel_diff(g_scaled, g_unit) > 10 * tol_value:
        raise Silent(
            f"gradient at scale {c:g} differs from the unscaled one by {rel_diff(g_scaled, g_unit):.3g} (relative)"
        )


# Below float32's smallest normal number the gradient's cotangent at G's output, O(1 / scale),
# overflows float32 in any reverse pass: there a clear error naming the scale is as good as a value.
_SUBNORMAL_NAMES = ("scale", "float64")
for _c in SCALES_PENALTY:
    _names = _SUBNORMAL_NAMES if _c < torch.finfo(torch.float32).tiny else ()
    for _w in ("uniform", "singular"):
        case("scale", f"spectral_penalty weights={_w} G scaled by {_c:g}", names=_names)(
            functools.partial(_penalty_scaled, _c, _w, False)
        )
    case("scale", f"SpectralRegularizer G scaled by {_c:g}", names=_names)(
        functools.partial(_penalty_scaled, _c, "uniform", True)
    )
for _c in (1e-25, 1.0, 1e20):
    for _loss in ("l1", "assigned"):
        case("scale", f"spectral_penalty loss={_loss} G scaled by {_c:g}")(
            functools.partial(_penalty_scaled, _c, "uniform", False, _loss)
        )


def penalty_grad_oracle(net: nn.Module, z: torch.Tensor, k: int, loss: str, weights: str) -> torch.Tensor:
    """d(penalty)/d(theta) by autograd through eigh of the explicit float64 J^T J (a float64 copy
    of net; distinct eigenvalues, every vector active), flattened like `grads`."""
    net64 = copy.deepcopy(net).double()
    params = list(net64.parameters())
    B = z.shape[0]
    J = torch.autograd.functional.jacobian(
        lambda x: net64(x).reshape(B, -1).sum(0), z.detach().double(), create_graph=True, vectorize=True
    ).permute(1, 0, 2)
    lam, vec = torch.linalg.eigh(J.transpose(1, 2) @ J)
    V, sig = vec.flip(-1).transpose(1, 2)[:, :k], lam.flip(-1)[:, :k].clamp_min(0).sqrt()
    if loss == "offdiag":
        S = sig if weights == "singular" else (torch.arange(k, 0, -1, dtype=torch.float64) / k).sqrt().expand_as(sig)
        w = weights
    else:
        S, w = (sig if weights == "singular" else torch.ones_like(sig)), "singular"
    return grads(params, loss_oracle(V, S, loss, w).mean())


def _penalty_grad_exact(c: float, loss: str):
    """grad='implicit' is exact at convergence: its parameter gradient against the float64 oracle's,
    for G scaled by c (the loss, hence its gradient, does not depend on c)."""
    net = LinearG(GAPPED, 10, 3, eps=0.05)
    z = latents(6, 6, seed=4)
    want = penalty_grad_oracle(net, z, 3, loss, "uniform")
    G = (lambda x: c * net(x)) if c != 1.0 else net
    with unchanged(net, z):
        value = spectral_ops.spectral_penalty(G, z, k=3, loss=loss, grad="implicit", iters=40, tol=PENALTY_TOL)
    got = grads(list(net.parameters()), value)
    check_finite(got, "the penalty's gradient")
    # the solver's residual (PENALTY_TOL) and the float32 products' rounding (16 eps), relative to
    # lambda_1, move the eigenvectors and their derivative by that over the relative gap: 8x that bound
    orc = oracle(as_float64(net, [net])[id(net)], z)
    gap = (orc.lam[:, 2] - orc.lam[:, 3]).min().item() / orc.lam[:, 0].max().item()
    bound = 8 * (PENALTY_TOL + 16 * eps_of(torch.float32)) / gap
    if rel_diff(got, want) > bound:
        raise Silent(
            f"implicit gradient at scale {c:g} off the float64 eigh gradient by {rel_diff(got, want):.3g} "
            f"(relative; bound {bound:.2g})"
        )


for _c in (1e-25, 1.0, 1e20):
    for _loss in ("offdiag", "l1"):
        case("scale", f"spectral_penalty grad=implicit loss={_loss} gradient vs eigh oracle, G scaled by {_c:g}")(
            functools.partial(_penalty_grad_exact, _c, _loss)
        )


def _alignment_scaled(backend: str, kind: str, c: float):
    gen = torch.Generator().manual_seed(5)
    V = ops.orthonormalize(torch.randn(4, 3, 7, generator=gen, dtype=torch.float64).float())
    S = (torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.2).float()
    want = loss_oracle(V.double(), S.double(), kind, "singular")
    Vg = V.clone().requires_grad_(True)
    with unchanged(V, S), ops.use_backend(backend):
        got = ops.alignment_loss(Vg, S * c, kind, "singular")
    check_finite(got, "alignment_loss")
    err = (got.double() - want).abs().max().item()
    if err > 64 * eps_of(torch.float32):
        raise Silent(f"alignment_loss {got.tolist()} with S * {c:g}, oracle {want.tolist()} (error {err:.3g})")
    (g,) = torch.autograd.grad(got.sum(), Vg)
    check_finite(g, "alignment_loss's gradient")
    V64 = V.double().requires_grad_(True)
    (g64,) = torch.autograd.grad(loss_oracle(V64, S.double(), kind, "singular").sum(), V64)
    gerr = (g.double() - g64).abs().max().item() / g64.abs().max().item()
    if gerr > 1e3 * eps_of(torch.float32):
        raise Silent(f"alignment_loss gradient with S * {c:g} off the oracle by {gerr:.3g} (relative)")


for _b in ops.available_backends("cpu"):
    for _k in ("offdiag", "l1"):
        for _c in SCALES_S:
            case("scale", f"ops.alignment_loss backend={_b} kind={_k} S scaled by {_c:g}")(
                functools.partial(_alignment_scaled, _b, _k, _c)
            )


def _orthonormalize_scaled(backend: str, c: float):
    """orthonormalize(c W) [B, k, d] against float64 QR of W^T with a positive R diagonal (Gram-Schmidt
    order): the same rows for any c > 0 the dtype holds, each to a few d eps of float32."""
    W = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    Q, R = torch.linalg.qr(W.transpose(1, 2))
    want = (Q * torch.sign(torch.diagonal(R, dim1=1, dim2=2))[:, None, :]).transpose(1, 2)
    Wc = (W * c).float()
    with unchanged(Wc), ops.use_backend(backend):
        got = ops.orthonormalize(Wc)
    check_finite(got, "orthonormalize")
    err = (got.double() - want).abs().max().item()
    if err > 4 * 7 * eps_of(torch.float32) * 10:  # d eps per dot product, times the rows' conditioning (< 10 here)
        raise Silent(f"orthonormalize(W * {c:g}) off float64 QR by {err:.3g}")


for _b in ops.available_backends("cpu"):
    for _c in (1e-30, 1e-20, 1.0, 1e20, 1e30):
        case("scale", f"ops.orthonormalize backend={_b} W scaled by {_c:g}")(
            functools.partial(_orthonormalize_scaled, _b, _c)
        )


def _scaled_entry(entry: str, c: float):
    net = mlp(6, 10, 12, seed=7)
    z = latents(16, 6, seed=8)
    f64 = as_float64(net, [net])[id(net)]
    G = lambda x: c * net(x)
    with unchanged(net, z):
        if entry == "global_directions":
            out = spectral_ops.global_directions(G, None, 3, latents=z, trace_probes=None)
        else:
            out = spectral_ops.trace_trajectory(G, z[:3], steps=2, topk_method="krylov")
    if entry == "global_directions":
        lam = torch.linalg.eigvalsh(oracle(f64, z, scale=c).M.mean(0)).flip(0)
        # the values are c^2 sigma^2: below float32's smallest subnormal they can only be 0
        err = (
            (out.values.double() - lam[:3]).abs().max().item()
            - torch.finfo(torch.float32).smallest_normal * eps_of(torch.float32)
        ) / lam[0].item()
        if not err <= 1.1e-4 + 16 * eps_of(torch.float32):
            raise Silent(f"global_directions values {out.values.tolist()} for G * {c:g}, oracle {lam[:3].tolist()}")
        ex = out.explained.double()
        want = lam[:3].cumsum(0) / lam.sum()
        if not (ex - want).abs().max().item() <= 1e-4:
            raise Silent(f"explained {ex.tolist()} for G * {c:g}, oracle {want.tolist()}")
    else:
        orc = oracle(f64, z[:3], scale=c)
        s0 = out.values[out.origin].double()
        err = ((s0 * s0 - orc.lam[:, : s0.shape[1]]).abs() / orc.lam[:, :1]).max().item()
        check_finite(out.z, "trajectory")
        if not err <= 1.1e-5 + 16 * eps_of(torch.float32):  # trace_trajectory's tol is 1e-5
            raise Silent(f"trajectory values at z0 for G * {c:g} off the oracle by {err:.3g} of lambda_1")


for _entry in ("global_directions", "trace_trajectory"):
    for _c in (1e-25, 1e-12, 1.0, 1e10, 1e20):
        # global_directions returns c^2 sigma^2, which float32 cannot hold at c = 1e20: an error naming
        # the scale is as good as a value there
        _names = ("scale", "overflow", "float64") if _entry == "global_directions" and _c > 1e19 else ()
        case("scale", f"{_entry} G scaled by {_c:g}", names=_names)(functools.partial(_scaled_entry, _entry, _c))


# ---- class: batch (krylov against the oracle, large batches) ----------------------------------


def _batch(B: int, d: int, k: int, seed: int, method: str = "krylov", G=None, hidden=10, m=12):
    net = G if G is not None else mlp(d, hidden, m, seed=seed)
    z = latents(B, d, seed=seed + 100)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    with unchanged(net, z):
        top = spectral_ops.jacobian_topk(net, z, k, method=method, iters=60)
    check_topk(top, orc, k, 1e-4, torch.float32, f"B={B} d={d} k={k} seed={seed}: ", must_converge=True)


for _s in range(5):
    case("batch", f"krylov 6-10-12 tanh, B=3000, k=3, seed {_s}" + (" (the issue's case)" if _s == 0 else ""))(
        functools.partial(_batch, 3000, 6, 3, _s)
    )
case("batch", "krylov 6-10-12 tanh, B=16, k=3, seed 0")(functools.partial(_batch, 16, 6, 3, 0))
case("batch", "auto 6-10-12 tanh, B=512, k=3, seed 0")(functools.partial(_batch, 512, 6, 3, 0, "auto"))
# 40 seeds of 64 latents (2560 samples), d 6..16, k from 3 to d - 1
for _s in range(40):
    _d = (6, 8, 10, 13, 16)[_s % 5]
    _k = (3, _d - 1, _d // 2, 4)[(_s // 5) % 4]
    case("batch", f"krylov d={_d} k={_k} B=64 seed {_s}")(
        functools.partial(_batch, 64, _d, _k, _s, hidden=_d + 4, m=_d + 6)
    )
for _s in range(1, 9):
    _d = (6, 8, 10, 12, 16)[_s % 5]
    case("batch", f"krylov d={_d} k={_d - 1} B=256 seed {_s}")(functools.partial(_batch, 256, _d, _d - 1, _s))
    case("batch", f"krylov d={_d} k=3 B=1024 seed {_s}")(functools.partial(_batch, 1024, _d, 3, _s))


def _skipping_init(B: int, method: str, noise: float):
    """A warm start that spans (up to `noise`) an invariant subspace skipping the third eigenvector,
    [v1, v2, v4]: what a previous step's basis can be after lambda_3 and lambda_4 crossed.  The
    top 3 still contain v3, and a converged flag must mean the top 3."""
    net = mlp(6, 10, 12, seed=61)
    z = latents(B, 6, seed=62)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    gen = torch.Generator().manual_seed(63)
    init = (orc.V[:, [0, 1, 3]] + noise * torch.randn(B, 3, 6, generator=gen, dtype=torch.float64)).float()
    with unchanged(net, z, init):
        top = spectral_ops.jacobian_topk(net, z, 3, method=method, init=init, iters=60)
    check_topk(top, orc, 3, 1e-4, torch.float32, f"B={B} init skipping v3 (noise {noise:g}): ")


for _m in ("krylov", "power", "dense", "auto"):
    for _B in (1, 16):
        for _noise in (0.0, 1e-3):
            case("batch", f"{_m} B={_B} from a warm start spanning [v1, v2, v4] (noise {_noise:g})")(
                functools.partial(_skipping_init, _B, _m, _noise)
            )


def _skipping_init_penalty(solver: str, noise: float):
    """spectral_penalty at its default tol from init = [v1, v2, v4] of each row, up to `noise` (see
    `_skipping_init`): the loss must be the one of the top 3 eigenvectors."""
    net = LinearG(GAPPED, 10, 3, eps=0.05)
    z = latents(6, 6, seed=4)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    want, tol = penalty_oracle(orc, 3)
    gen = torch.Generator().manual_seed(64)
    init = (orc.V[:, [0, 1, 3]] + noise * torch.randn(6, 3, 6, generator=gen, dtype=torch.float64)).float()
    with unchanged(net, z, init):
        value = spectral_ops.spectral_penalty(net, z, k=3, init=init, solver=solver, iters=40)
    if not abs(value.item() - want) <= tol:
        raise Silent(
            f"penalty {value.item():.6g} from init [v1, v2, v4] + {noise:g} noise, oracle {want:.6g} (tol {tol:.2g})"
        )


for _solver in ("krylov", "power"):
    for _noise in (0.0, 1e-6):
        case("batch", f"spectral_penalty solver={_solver} from init spanning [v1, v2, v4] (noise {_noise:g})")(
            functools.partial(_skipping_init_penalty, _solver, _noise)
        )


def _skipping_running_basis(noise: float):
    """SpectralRegularizer at its defaults whose running basis spans [v1, v2, v4] of a G with the same
    singular vectors at every z (a generator it has aligned, after lambda_3 and lambda_4 crossed):
    the penalty must still be the one of the top 3 eigenvectors."""
    net = LinearG(GAPPED, 10, 5)
    z = latents(8, 6, seed=5)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    want, tol = penalty_oracle(orc, 3)
    reg = spectral_ops.SpectralRegularizer(6, k=3, every=1, batch_fraction=1.0)
    gen = torch.Generator().manual_seed(65)
    with torch.no_grad():
        reg.basis.copy_(orc.V[0, [0, 1, 3]] + noise * torch.randn(3, 6, generator=gen, dtype=torch.float64))
    with unchanged(net, z):
        value = reg(net, z)
    if not abs(value.item() - want) <= tol:
        raise Silent(
            f"penalty {value.item():.6g} from a running basis [v1, v2, v4] + {noise:g} noise, oracle "
            f"{want:.6g} (tol {tol:.2g})"
        )


for _noise in (0.0, 1e-6, 1e-3):
    case("batch", f"SpectralRegularizer with a running basis spanning [v1, v2, v4] (noise {_noise:g})")(
        functools.partial(_skipping_running_basis, _noise)
    )


def _skipping_init_trajectory(method: str):
    """trace_trajectory from init = [v1, v2, v4] at z0: its values at z0 are the top 3 there."""
    net = mlp(6, 10, 12, seed=61)
    z = latents(2, 6, seed=62)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    init = orc.V[:, [0, 1, 3]].float()
    with unchanged(net, z, init):
        tr = spectral_ops.trace_trajectory(net, z, steps=1, k=3, init=init, topk_method=method)
    s0 = tr.values[tr.origin].double()
    err = ((s0 * s0 - orc.lam[:, :3]).abs() / orc.lam[:, :1]).max().item()
    if err > 1.1e-5 + 16 * eps_of(torch.float32):  # trace_trajectory's tol is 1e-5
        raise Silent(
            f"trajectory sigma^2 at z0 {(s0 * s0)[0].tolist()} from init [v1, v2, v4], oracle "
            f"{orc.lam[0, :4].tolist()} (error {err:.3g} of lambda_1)"
        )


for _m in ("krylov", "power", "dense"):
    case("batch", f"trace_trajectory topk_method={_m} from init spanning [v1, v2, v4]")(
        functools.partial(_skipping_init_trajectory, _m)
    )


_REPEATED = (3, 3, 2, 2, 2, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25)
case("batch", "krylov d=13 k=12 B=16, exactly repeated singular values")(
    functools.partial(_batch, 16, 13, 12, 7, G=LinearG(_REPEATED, 20, 7))
)
case("batch", "krylov d=13 k=12 B=16, near-repeated singular values")(
    functools.partial(_batch, 16, 13, 12, 8, G=LinearG(_REPEATED, 20, 8, eps=1e-3))
)
case("batch", "krylov d=13 k=5 B=2000, near-repeated singular values")(
    functools.partial(_batch, 2000, 13, 5, 9, G=LinearG(_REPEATED, 20, 9, eps=1e-2))
)
case("batch", "dense d=13 k=12 B=16, exactly repeated singular values")(
    functools.partial(_batch, 16, 13, 12, 7, "dense", G=LinearG(_REPEATED, 20, 7))
)
case("batch", "power d=13 k=2 B=64, near-repeated singular values")(
    functools.partial(_batch, 64, 13, 2, 10, "power", G=LinearG(_REPEATED, 20, 10, eps=1e-2))
)


# ---- class: dtypes ----------------------------------------------------------------------------


def _dtype(dtype: torch.dtype, method: str):
    net = mlp(6, 10, 12, seed=11, dtype=dtype)
    z = latents(8, 6, seed=12, dtype=dtype)
    orc = oracle(as_float64(net, [net])[id(net)], z)  # the same (rounded) weights, in float64
    # G runs in `dtype`: its Jacobian is the float64 one to a few eps of dtype per layer, so a
    # residual below 4 eps is all a half-precision G can be asked for
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 4 * eps_of(dtype)
    with unchanged(net, z):
        top = spectral_ops.jacobian_topk(net, z, 3, method=method, iters=80, tol=tol)
    check_topk(top, orc, 3, tol, dtype, f"{dtype}: ", must_converge=True)


def _autocast(entry: str, method: str):
    net = mlp(6, 10, 12, seed=13)
    z = latents(16, 6, seed=14)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    bf = 16 * eps_of(torch.bfloat16)
    with unchanged(net, z), torch.autocast("cpu", dtype=torch.bfloat16):
        if entry == "topk":
            top = spectral_ops.jacobian_topk(net, z, 3, method=method, iters=80)
        elif entry == "directions":
            gd = spectral_ops.global_directions(net, None, 3, latents=z, trace_probes=None)
        else:
            tr = spectral_ops.trace_trajectory(net, z[:4], steps=2, topk_method=method)
    if entry == "topk":
        check_topk(top, orc, 3, bf, torch.bfloat16, "autocast: ")
    elif entry == "directions":
        lam = torch.linalg.eigvalsh(orc.M.mean(0)).flip(0)
        err = ((gd.values.double() - lam[:3]).abs() / lam[0]).max().item()
        if err > 2 * bf:
            raise Silent(f"global_directions values {gd.values.tolist()} vs oracle {lam[:3].tolist()} under autocast")
    else:
        check_finite(tr.z, "trajectory")
        s0 = tr.values[tr.origin].double()
        err = ((s0 * s0 - orc.lam[:4, : s0.shape[1]]).abs() / orc.lam[:4, :1]).max().item()
        if err > 2 * bf:
            raise Silent(f"trajectory values at z0 off the oracle by {err:.3g} under autocast")


for _dt in (torch.float16, torch.bfloat16, torch.float64):
    for _m in ("power", "krylov", "dense"):
        case("dtypes", f"jacobian_topk {str(_dt)[6:]} method={_m}")(functools.partial(_dtype, _dt, _m))
for _m in ("power", "krylov", "dense"):
    case("dtypes", f"jacobian_topk under autocast(bf16) method={_m}", names=("autocast",))(
        functools.partial(_autocast, "topk", _m)
    )
case("dtypes", "global_directions under autocast(bf16)", names=("autocast",))(
    functools.partial(_autocast, "directions", None)
)
case("dtypes", "trace_trajectory krylov under autocast(bf16)", names=("autocast",))(
    functools.partial(_autocast, "trajectory", "krylov")
)


def _penalty_dtype(dtype):
    net = mlp(6, 12, 10, seed=3, dtype=dtype)
    z = latents(6, 6, seed=4, dtype=dtype)
    orc = oracle(as_float64(net, [net])[id(net)], z)
    want, tol = penalty_oracle(orc, 3)
    with unchanged(net, z):
        value = spectral_ops.spectral_penalty(net, z, k=3)
    check_finite(value, "penalty")
    tol = tol if dtype in (torch.float32, torch.float64) else tol + 64 * eps_of(dtype)
    if abs(value.item() - want) > tol:
        raise Silent(f"penalty {value.item():.6g} in {dtype}, oracle {want:.6g} (tol {tol:.2g})")


for _dt in (torch.float16, torch.bfloat16, torch.float64):
    case("dtypes", f"spectral_penalty {str(_dt)[6:]}")(functools.partial(_penalty_dtype, _dt))


# ---- class: generators ------------------------------------------------------------------------


def _odd(kind: str, method: str = "auto"):
    """One odd generator through jacobian_topk.  ref: the float64 function the result must match
    (None: the call must be refused, naming the argument or rows)."""
    d, B, k = 6, 4, 3
    net = mlp(d, 10, 12, seed=21)
    z = latents(B, d, seed=22)
    f64 = as_float64(net, [net])[id(net)]
    state, ref = [net], None
    if kind == "inplace":
        G = lambda x: net(x.clamp_(-3, 3))
        ref = lambda x: f64(x.clamp(-3, 3))
    elif kind == "nonfinite":
        G = lambda x: net(x) / (x[:, :1] > 0).to(x.dtype)  # Inf on the rows with z_0 <= 0
    elif kind == "zero_d":
        G = lambda x: net(x).sum()
    elif kind == "mutating":

        class Drift(nn.Module):
            """Scales its first weight by 1.01 on every forward."""

            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                with torch.no_grad():
                    self.net[0].weight.mul_(1.01)
                return self.net(x)

        G = Drift()
    elif kind == "labels":
        c = torch.arange(B) % 3
        emb = nn.Embedding(3, d)
        G = lambda x: net(x + emb(c))  # per-row labels captured in a lambda
        state.append(emb)
    elif kind == "batchnorm":
        torch.manual_seed(21)
        G = nn.Sequential(nn.Linear(d, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Linear(10, 12)).train()
        state = [G]
    elif kind == "rank":
        G = LinearG((2.0, 1.0, 0.5, 0, 0, 0), 12, 23)
        state, ref = [G], as_float64(G, [G])[id(G)]
    elif kind in ("d1", "kd", "B1"):
        d = 1 if kind == "d1" else d
        k = {"d1": 1, "kd": d, "B1": k}[kind]
        net = mlp(d, 10, 12, seed=24)
        z = latents(1 if kind == "B1" else B, d, seed=25)
        G, state, ref = net, [net], as_float64(net, [net])[id(net)]
    else:
        raise AssertionError(kind)
    z_call = z.clone()  # the caller's tensor: must come back as it was
    with unchanged(*state, z_call):
        top = spectral_ops.jacobian_topk(G, z_call, k, method=method, iters=80)
    if ref is None:
        raise Silent(f"returned values {top.values[:2].tolist()} where an error was due")
    check_topk(top, oracle(ref, z), k, 1e-4, torch.float32, must_converge=True)


_GEN_NAMES = {
    "inplace": ("in-place", "inplace"),
    "nonfinite": ("rows",),
    "zero_d": ("0-d",),
    "mutating": ("parameter", "parameters"),
    "labels": ("conditioned",),
    "batchnorm": ("batchnorm",),
    "rank": (),
    "d1": (),
    "kd": (),
    "B1": (),
}
for _kind, _names in _GEN_NAMES.items():
    for _m in ("power", "krylov", "dense"):
        case("generators", f"G {_kind} method={_m}", names=_names)(functools.partial(_odd, _kind, _m))


def _odd_penalty(kind: str):
    net = mlp(6, 10, 12, seed=26)
    z = latents(4, 6, seed=27)
    if kind == "nonfinite":
        G = lambda x: net(x) / (x[:, :1] > 0).to(x.dtype)
    elif kind == "inplace":
        G = lambda x: net(x.clamp_(-3, 3))
    else:
        G = nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Linear(10, 12)).train()
    mods = [net] if not isinstance(G, nn.Module) else [G]
    zc = z.clone()
    with unchanged(*mods, zc):
        value = spectral_ops.spectral_penalty(G, zc, k=3)
    if kind != "inplace":
        raise Silent(f"penalty {value.item()} where an error was due")
    want, tol = penalty_oracle(oracle(lambda x: as_float64(net, [net])[id(net)](x.clamp(-3, 3)), z), 3)
    if not abs(value.item() - want) <= tol:
        raise Silent(f"penalty {value.item():.6g}, oracle {want:.6g}")


def _odd_output(kind: str, method: str):
    net = mlp(6, 10, 12, seed=28)
    z = latents(4, 6, seed=29)
    G = {
        "tuple": lambda x: (net(x),),
        "detached": lambda x: net(x).detach(),
        "int": lambda x: (net(x) * 100).long(),
        "rows": lambda x: net(x)[:1],
    }.get(kind, net)
    ctx = torch.inference_mode() if kind == "inference_mode" else contextlib.nullcontext()
    zc = z.clone()
    with unchanged(net, zc), ctx:
        top = spectral_ops.jacobian_topk(G, zc, 2, method=method)
    raise Silent(f"returned values {top.values[:1].tolist()} where an error was due")


for _kind, _names in (
    ("tuple", ("tensor",)),
    ("detached", ("autograd", "detach")),
    ("int", ("dtype", "autograd")),
    ("rows", ("batch size", "rows")),
    ("inference_mode", ("inference_mode",)),
):
    for _m in ("krylov", "dense"):
        case(
            "generators",
            f"G {_kind} output method={_m}" if _kind != "inference_mode" else f"under {_kind} method={_m}",
            names=_names,
        )(functools.partial(_odd_output, _kind, _m))


for _kind, _names in (("nonfinite", ("rows",)), ("inplace", ("in-place", "inplace")), ("batchnorm", ("batchnorm",))):
    case("generators", f"spectral_penalty G {_kind}", names=_names)(functools.partial(_odd_penalty, _kind))


# ---- class: holders ---------------------------------------------------------------------------


def _holder(how: str, mapping, synthesis):
    both = Both(mapping, synthesis)
    if how == "module":
        return both
    if how == "lambda":
        return lambda x: synthesis(mapping(x))
    if how == "partial":
        return functools.partial(lambda m, s, x: s(m(x)), mapping, synthesis)
    if how == "bound method":
        return StyleLoss(mapping, synthesis).run_G
    if how == "callable object":
        return Wrapper(both)
    if how == "dict lookup":
        table = {"G": both}
        return lambda x: table["G"](x)
    if how == "SimpleNamespace":
        ns = types.SimpleNamespace(G=both)
        return lambda x: ns.G(x)
    raise AssertionError(how)


HOLDERS = ("module", "lambda", "partial", "bound method", "callable object", "dict lookup", "SimpleNamespace")
ENTRIES = ("jacobian_topk", "spectral_penalty", "SpectralRegularizer", "global_directions", "trace_trajectory")


def _holder_case(how: str, entry: str, refused: bool):
    mapping, synthesis = style_pair(batchnorm=refused, seed=31)
    G = _holder(how, mapping, synthesis)
    z = latents(4, 6, seed=32)
    f64 = as_float64(None, [mapping, synthesis])
    ref = lambda x: f64[id(synthesis)](f64[id(mapping)](x))
    with unchanged(mapping, synthesis, z):
        if entry == "jacobian_topk":
            out = spectral_ops.jacobian_topk(G, z, 3, method="krylov", iters=60)
        elif entry == "spectral_penalty":
            out = spectral_ops.spectral_penalty(G, z, k=3)
        elif entry == "SpectralRegularizer":
            out = spectral_ops.SpectralRegularizer(6, k=3, every=1, batch_fraction=1.0)(G, z)
        elif entry == "global_directions":
            out = spectral_ops.global_directions(G, None, 2, latents=z, trace_probes=None)
        else:
            out = spectral_ops.trace_trajectory(G, z[:2], steps=2, topk_method="dense")
    if refused:
        raise Silent(f"{entry} ran through train-mode BatchNorm behind a {how} (batchnorm='error')")
    if entry == "jacobian_topk":
        check_topk(out, oracle(ref, z), 3, 1e-4, torch.float32)
    elif entry in ("spectral_penalty", "SpectralRegularizer"):
        want, tol = penalty_oracle(oracle(ref, z), 3)
        if not abs(out.item() - want) <= tol:
            raise Silent(f"penalty {out.item():.6g}, oracle {want:.6g} (tol {tol:.2g})")
    elif entry == "global_directions":
        _gd_values(ref, z, 2)(out)
    else:  # the trajectory's values at z0 are the top singular values there (dense: tol 1e-4)
        orc = oracle(ref, z[:2])
        s0 = out.values[out.origin].double()
        err = ((s0 * s0 - orc.lam[:, : s0.shape[1]]).abs() / orc.lam[:, :1]).max().item()
        if err > 1.1e-4 + 16 * eps_of(torch.float32):
            raise Silent(f"trajectory values at z0 off the oracle by {err:.3g} of lambda_1")


for _how in HOLDERS:
    for _entry in ENTRIES:
        case("holders", f"{_entry} through a {_how}, train-mode mapping with w_avg")(
            functools.partial(_holder_case, _how, _entry, False)
        )
    case("holders", f"refused: train-mode BatchNorm behind a {_how}", names=("batchnorm", "couples"))(
        functools.partial(_holder_case, _how, "jacobian_topk", True)
    )
    case("holders", f"refused penalty: train-mode BatchNorm behind a {_how}", names=("batchnorm", "couples"))(
        functools.partial(_holder_case, _how, "spectral_penalty", True)
    )


def _holder_eval(how: str):
    """batchnorm='eval' through a holder: the running statistics are used and left as they were."""
    mapping, synthesis = style_pair(batchnorm=True, seed=33)
    G = _holder(how, mapping, synthesis)
    z = latents(4, 6, seed=34)
    f64 = as_float64(None, [mapping, synthesis])  # its BatchNorm in eval mode
    ref = lambda x: f64[id(synthesis)](f64[id(mapping)](x))
    with unchanged(mapping, synthesis, z):
        top = spectral_ops.jacobian_topk(G, z, 3, method="dense", batchnorm="eval")
    check_topk(top, oracle(ref, z), 3, 1e-4, torch.float32)


for _how in HOLDERS:
    case("holders", f"batchnorm='eval' behind a {_how}", names=("batchnorm",))(functools.partial(_holder_eval, _how))


# ---- class: arguments -------------------------------------------------------------------------


def _small():
    return mlp(6, 10, 12, seed=41), latents(3, 6, seed=42)


def _args_cases(net, z):
    """(name, words a clear error must contain, the call, its check).  check None: the call must be
    refused; a callable: the call must work and its result pass the oracle check."""
    f64 = as_float64(net, [net])[id(net)]
    top_ok = lambda top: check_topk(top, oracle(f64, z), 2, 1e-4, torch.float32)
    huge, over = 2**63 + 5, 2**70
    tt, gd, topk = spectral_ops.trace_trajectory, spectral_ops.global_directions, spectral_ops.jacobian_topk
    lat = {n: latents(n, 6, seed=43 + n) for n in (1, 32, 64)}
    return [
        ("trace_trajectory both_ways='no'", ("both_ways",), lambda: tt(net, z, steps=1, both_ways="no"), None),
        ("trace_trajectory warm_start='no'", ("warm_start",), lambda: tt(net, z, steps=1, warm_start="no"), None),
        ("trace_trajectory progress='no'", ("progress",), lambda: tt(net, z, steps=1, progress="no"), None),
        ("global_directions stability='no'", ("stability",), lambda: gd(net, None, 2, latents=z, stability="no"), None),
        ("global_directions progress='no'", ("progress",), lambda: gd(net, None, 2, latents=z, progress="no"), None),
        (
            "SpectralRegularizer warm_start='no'",
            ("warm_start",),
            lambda: spectral_ops.SpectralRegularizer(6, warm_start="no"),
            None,
        ),
        (
            "jacobian_topk seed=2**63+5 (a torch seed)",
            ("seed",),
            lambda: topk(net, z, 2, seed=huge, method="krylov"),
            top_ok,
        ),
        ("jacobian_topk seed=2**70", ("seed",), lambda: topk(net, z, 2, seed=over), None),
        (
            "trace_trajectory seed=2**63+5",
            ("seed",),
            lambda: tt(net, z, steps=1, seed=huge, topk_method="krylov"),
            lambda tr: check_finite(tr.z, "trajectory"),
        ),
        ("trace_trajectory seed=2**70", ("seed",), lambda: tt(net, z, steps=1, seed=over), None),
        (
            "global_directions seed=2**63+5",
            ("seed",),
            lambda: gd(net, 8, 2, latent_dim=6, seed=huge),
            lambda r: check_finite(r.values, "values"),
        ),
        ("global_directions seed=2**70", ("seed",), lambda: gd(net, 8, 2, latent_dim=6, seed=over), None),
        (
            "RegularizerConfig seed=2**70",
            ("seed",),
            lambda: spectral_ops.RegularizerConfig(seed=over).validate(6),
            None,
        ),
        ("SpectralRegularizer seed=2**70", ("seed",), lambda: spectral_ops.SpectralRegularizer(6, seed=over), None),
        (
            "SpectralRegularizer seed=2**63+5",
            ("seed",),
            lambda: spectral_ops.SpectralRegularizer(6, k=2, seed=huge, batch_fraction=0.5)(net, z),
            lambda v: check_finite(v, "penalty"),
        ),
        ("jacobian_topk z on meta", ("meta",), lambda: topk(net, z.to("meta"), 2), None),
        (
            "trace_trajectory init on meta",
            ("meta", "init"),
            lambda: tt(net, z, steps=1, init=torch.empty(2, 6, device="meta")),
            None,
        ),
        (
            "ops.orthonormalize on meta, reference backend",
            ("meta",),
            lambda: _with_backend("reference", ops.orthonormalize, torch.empty(2, 2, 6, device="meta")),
            _meta_result,
        ),
        (
            "ops.orthonormalize on meta, default backend",
            ("meta",),
            lambda: ops.orthonormalize(torch.empty(2, 2, 6, device="meta")),
            _meta_result,
        ),
        (
            "ops.alignment_loss V on meta",
            ("meta",),
            lambda: ops.alignment_loss(torch.empty(2, 2, 6, device="meta"), torch.ones(2, 2)),
            None,
        ),
        (
            "conditioned(G, c) with c on meta",
            ("meta", "row argument"),
            lambda: topk(spectral_ops.conditioned(lambda x, c: net(x), torch.zeros(3, device="meta")), z, 2),
            None,
        ),
        (
            "SpectralRegularizer(6, config={'k': 2})",
            ("config",),
            lambda: spectral_ops.SpectralRegularizer(6, config={"k": 2}),
            _k_is_2,
        ),
        ("jacobian_topk z 1-d", ("z",), lambda: topk(net, z[0], 2), None),
        ("jacobian_topk k=0", ("k",), lambda: topk(net, z, 0), None),
        ("jacobian_topk k=d+1", ("k",), lambda: topk(net, z, 7), None),
        ("jacobian_topk k=2.0", ("k",), lambda: topk(net, z, 2.0), None),
        ("jacobian_topk k=True", ("k",), lambda: topk(net, z, True), None),
        ("jacobian_topk init wrong shape", ("init",), lambda: topk(net, z, 2, init=torch.ones(3, 5)), None),
        (
            "jacobian_topk z with a NaN row",
            ("rows", "z"),
            lambda: topk(net, torch.cat([z[:2], torch.full((1, 6), math.nan)]), 2),
            None,
        ),
        ("jacobian_topk tol=-1", ("tol",), lambda: topk(net, z, 2, tol=-1.0), None),
        ("jacobian_topk iters=0", ("iters",), lambda: topk(net, z, 2, iters=0), None),
        ("jacobian_topk method='fast'", ("method",), lambda: topk(net, z, 2, method="fast"), None),
        ("jacobian_topk G not callable", ("G",), lambda: topk("G", z, 2), None),
        ("jacobian_topk z float64, G float32", ("z", "dtype"), lambda: topk(net, z.double(), 2), None),
        (
            "spectral_penalty z int",
            ("z",),
            lambda: spectral_ops.spectral_penalty(net, torch.ones(3, 6, dtype=torch.long)),
            None,
        ),
        (
            "spectral_penalty init wrong shape",
            ("init",),
            lambda: spectral_ops.spectral_penalty(net, z, k=2, init=torch.ones(2, 5)),
            None,
        ),
        ("spectral_penalty loss='l2'", ("loss",), lambda: spectral_ops.spectral_penalty(net, z, loss="l2"), None),
        (
            "SpectralRegularizer z wrong latent size",
            ("z", "latent_dim"),
            lambda: spectral_ops.SpectralRegularizer(5)(net, z),
            None,
        ),
        (
            "jacobian_topk dense tol=0 (converged must be False)",
            (),
            lambda: topk(net, z, 2, method="dense", tol=0.0),
            _tol0(f64, z),
        ),
        ("jacobian_topk auto tol=0 B=1", (), lambda: topk(net, z[:1], 2, tol=0.0), _tol0(f64, z[:1])),
        ("jacobian_topk krylov tol=0", (), lambda: topk(net, z, 2, method="krylov", tol=0.0, iters=5), _tol0(f64, z)),
        (
            "global_directions explained at k=d",
            (),
            lambda: gd(net, None, 6, latents=lat[32]),
            _explained(f64, lat[32], 6),
        ),
        (
            "global_directions explained n_samples=1",
            (),
            lambda: gd(net, None, 3, latents=lat[1]),
            _explained(f64, lat[1], 3),
        ),
        (
            "global_directions explained k=2, 64 samples",
            (),
            lambda: gd(net, None, 2, latents=lat[64]),
            _explained(f64, lat[64], 2),
        ),
        (
            "global_directions values k=3 against E[J^T J]",
            (),
            lambda: gd(net, None, 3, latents=lat[64]),
            _gd_values(f64, lat[64], 3),
        ),
    ]


def _meta_result(out):
    if out.device.type != "meta":
        raise Silent("a meta input gave a result on another device")


def _k_is_2(reg):
    if reg.k != 2:
        raise Silent(f"config={{'k': 2}} accepted but k is {reg.k}")


def _tol0(f64, z):
    """converged = residual < tol cannot hold for tol = 0: every flag must be False."""

    def check(top):
        check_topk(top, oracle(f64, z), top.vectors.shape[1], 0.0, torch.float32)

    return check


def _gd_values(f64, lat, k):
    lam = torch.linalg.eigvalsh(oracle(f64, lat).M.mean(0)).flip(0)

    def check(r):
        err = ((r.values.double() - lam[:k]).abs() / lam[0]).max().item()
        if r.converged.all() and err > 1.1e-4 + 16 * eps_of(torch.float32):
            raise Silent(f"global_directions values {r.values.tolist()} vs oracle {lam[:k].tolist()}")

    return check


def _with_backend(name, fn, *args):
    with ops.use_backend(name):
        return fn(*args)


def _explained(f64, lat, k):
    """explained [k] must be the cumulative share of the exact trace of E[J^T J]: in [0, 1],
    1 at k = d, and the oracle's share within 64 eps + what a Hutchinson estimate honestly reports."""
    M = oracle(f64, lat).M.mean(0)
    lam = torch.linalg.eigvalsh(M).flip(0)
    want = lam[:k].cumsum(0) / lam.sum()

    def check(gd):
        ex = gd.explained.double()
        check_finite(ex, "explained")
        if bool((ex > 1 + 1e-6).any()) or bool((ex < 0).any()):
            raise Silent(f"explained {ex.tolist()} is not a share (oracle {want.tolist()})")
        err = (ex - want).abs().max().item()
        if gd.trace_exact and err > 1e-4:
            raise Silent(f"explained {ex.tolist()}, oracle {want.tolist()} (trace_exact=True)")
        if not gd.trace_exact and err > 0.05:
            raise Silent(f"explained {ex.tolist()}, oracle {want.tolist()} (a Hutchinson estimate off by {err:.3g})")

    return check


def _args_case(i: int):
    net, z = _small()
    _, _, call, check = _args_cases(net, z)[i]
    with unchanged(net, z):
        out = call()
    if check is None:
        raise Silent(f"accepted, returned {type(out).__name__} where an error naming the argument was due")
    check(out)


for _i, _row in enumerate(_args_cases(*_small())):
    case("arguments", _row[0], names=_row[1])(functools.partial(_args_case, _i))


PEERS = {"hessian_penalty": hessian_penalty, "orojar": orojar, "jacobian_l1": jacobian_l1, "path_length": path_length}


def _peer(which: str, kind: str):
    net = mlp(6, 10, 12, seed=51)
    z = latents(4, 6, seed=52)
    fn = PEERS[which]
    kwargs = {}
    G = net
    if kind == "nonfinite":
        G = lambda x: net(x) / (x[:, :1] > 0).to(x.dtype)
    elif kind == "zero_d":
        G = lambda x: net(x).sum()
    elif kind == "G_z shape":
        kwargs = {"G_z": torch.randn(3, 12)}
    elif kind == "noise list":
        kwargs = {"noise": [1.0]}
    elif kind == "mean str":
        kwargs = {"mean": "a"}
    elif kind == "z nan":
        z = torch.cat([z[:3], torch.full((1, 6), math.nan)])
    zc = z.clone()
    with unchanged(net, zc, rng=False):  # the peers draw from the global RNG by design (their `generator` argument)
        out = fn(G, zc, **kwargs)
    raise Silent(f"{which} returned {out.detach().flatten()[:2].tolist()} where an error was due")


for _which in PEERS:
    for _kind, _names in (
        ("nonfinite", ("rows",)),
        ("zero_d", ("0-d", "G")),
        ("z nan", ("rows", "z")),
        ("G_z shape", ("G_z",)),
    ):
        if _kind == "G_z shape" and _which == "path_length":
            continue
        case("arguments", f"{_which} {_kind}", names=_names)(functools.partial(_peer, _which, _kind))
for _kind, _names in (("noise list", ("noise",)), ("mean str", ("mean",))):
    case("arguments", f"path_length {_kind}", names=_names)(functools.partial(_peer, "path_length", _kind))


def _peer_right(which: str):
    """A peer's value on a well-posed input against its formula evaluated in float64 is out of
    scope here (their formulas are stochastic); what is checked: finite, and G untouched."""
    net = mlp(6, 10, 12, seed=53)
    z = latents(4, 6, seed=54)
    fn = PEERS[which]
    with unchanged(net, z, rng=False):  # the peers draw from the global RNG by design
        out = fn(net, z)
    value = out[0] if isinstance(out, tuple) else out
    check_finite(value, which)


for _which in PEERS:
    case("arguments", f"{_which} on a plain G (finite, G untouched)")(functools.partial(_peer_right, _which))


# ---- class: cli -------------------------------------------------------------------------------

# Put on PYTHONPATH as sitecustomize.py: the files the CLI opens for writing (os.fdopen, as its
# atomic writers do) share 4 KB of disk; a write past them raises OSError(ENOSPC) from the file, so
# torch.save meets the full disk inside its zip writer, where a real one meets it.
ENOSPC_HOOK = """\
import errno, io, os
_real, _used, FREE = os.fdopen, [0], 4096
class _Disk(io.FileIO):
    def write(self, data):
        n = memoryview(data).nbytes
        if _used[0] + n > FREE:
            raise OSError(errno.ENOSPC, "No space left on device")
        _used[0] += n
        return super().write(data)
def _fdopen(fd, mode="r", *args, **kwargs):
    if "w" not in mode:
        return _real(fd, mode, *args, **kwargs)
    return io.BufferedWriter(_Disk(fd, "wb"))
os.fdopen = _fdopen
"""
TRAIN = [
    "train",
    "--dataset",
    "dots",
    "--n-train",
    "64",
    "--batch-size",
    "8",
    "--width",
    "8",
    "--latent-dim",
    "4",
    "--ema",
    "0",
    "--no-progress",
    "--threads",
    "1",
]


def _cli(args, cwd: Path, hook: bool = False, timeout: int = 240) -> subprocess.CompletedProcess:
    paths = ([str(cwd / "hook")] if hook else []) + [str(ROOT)]
    if hook:
        (cwd / "hook").mkdir(exist_ok=True)
        (cwd / "hook" / "sitecustomize.py").write_text(ENOSPC_HOOK)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run(
        [sys.executable, "-m", "spectral_ops.lab.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line(proc, code: int, words: tuple[str, ...], what: str):
    """("clear-error", the line) when the CLI exited with `code`, printed no traceback, and its last
    stderr line is one "spectral-ops ...: error: ..." line naming one of `words` (progress lines
    such as "resuming ..." may come before it); otherwise a crash (RuntimeError raised here)."""
    err = proc.stderr.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error:" in line]
    if (
        proc.returncode != code
        or "Traceback" in err
        or len(errors) != 1
        or errors[0] != lines[-1]
        or not any(w in errors[0].lower() for w in words)
    ):
        raise RuntimeError(f"{what}: exit {proc.returncode} (want {code}), stderr {err[-300:]!r}")
    return "clear-error", f"exit {code}: {lines[-1]}"


def _cli_case(kind: str):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        topk = ["topk", "--latent-dim", "8", "--batch", "2", "--size", "16", "--iters", "5"]
        if kind == "topk huge seed":
            return _one_line(_cli(topk + ["--seed", str(2**70)], tmp), 2, ("seed",), "topk --seed 2**70")
        if kind == "topk torch seed":
            proc = _cli(topk + ["--seed", str(2**63 + 5)], tmp)
            if proc.returncode != 0:
                raise RuntimeError(f"topk --seed 2**63+5: exit {proc.returncode}: {proc.stderr.strip()[-300:]!r}")
            return None
        if kind == "full disk":
            return _one_line(
                _cli(TRAIN + ["--steps", "2", "--out", str(tmp / "run")], tmp, hook=True),
                2,
                ("space", "disk"),
                "train on a full disk",
            )
        out = tmp / "run"
        first = _cli(TRAIN + ["--steps", "2", "--out", str(out)], tmp)
        if first.returncode != 0:
            raise RuntimeError(f"setup run failed: {first.stderr[-300:]}")
        if kind == "eval on NaN weights":
            ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
            for value in ckpt["G"].values():
                if value.is_floating_point():
                    value.fill_(math.nan)
            torch.save(ckpt, tmp / "nan.pt")
            proc = _cli(
                [
                    "eval",
                    "--ckpt",
                    str(tmp / "nan.pt"),
                    "--n-samples",
                    "100",
                    "--out",
                    str(tmp / "eval"),
                    "--cache-dir",
                    str(tmp / "cache"),
                    "--threads",
                    "1",
                    "--no-progress",
                ],
                tmp,
            )
            return _one_line(proc, 2, ("g(z)",), "eval on NaN weights")
        if kind == "resume at final step":
            with unchanged(out, rng=False):
                proc = _cli(TRAIN + ["--steps", "2", "--out", str(out), "--resume"], tmp)
            if proc.returncode != 0:
                return _one_line(proc, 2, ("step",), "resume at the final step")
            return None
        # the log may grow by the steps run; the checkpoint and the summary must stay as they were
        with unchanged(out / "checkpoint.pt", out / "train.json", rng=False):
            proc = _cli(TRAIN + ["--steps", "4", "--out", str(out), "--resume"], tmp, hook=True)
        return _one_line(proc, 2, ("space", "disk"), "train --resume on a full disk")


for _kind in (
    "topk huge seed",
    "topk torch seed",
    "resume at final step",
    "full disk",
    "resume full disk",
    "eval on NaN weights",
):
    case("cli", f"spectral-ops {_kind}")(functools.partial(_cli_case, _kind))


# ---- runner -----------------------------------------------------------------------------------


def run(quick: bool, only: set[str] | None = None, progress: bool = True) -> list[Result]:
    results = []
    for c in CASES:
        if (quick and c.cls == "cli") or (only and c.cls not in only):
            continue
        r = classify(c)
        results.append(r)
        if progress:
            print(f"{r.outcome:11s} {r.seconds:6.2f}s  {c.cls:10s} {c.name}", file=sys.stderr, flush=True)
    return results


def report(results: list[Result], title: str) -> str:
    counts = collections.OrderedDict((cls, collections.Counter()) for cls in CLASSES)
    for r in results:
        counts[r.case.cls][r.outcome] += 1
    lines = [f"### {title}", "", "| class | " + " | ".join(OUTCOMES) + " | cases |", "|---" * (len(OUTCOMES) + 2) + "|"]
    total = collections.Counter()
    for cls, cnt in counts.items():
        if sum(cnt.values()):
            lines.append(f"| {cls} | " + " | ".join(str(cnt[o]) for o in OUTCOMES) + f" | {sum(cnt.values())} |")
            total.update(cnt)
    lines.append("| **all** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES) + f" | **{sum(total.values())}** |")
    lines += ["", "Every case that is not right or a clear error:", ""]
    bad = [r for r in results if r.outcome not in ("right", "clear-error")]
    for r in sorted(bad, key=lambda r: (("silent", "state", "crash").index(r.outcome), CLASSES.index(r.case.cls))):
        lines.append(f"- **{r.outcome}** [{r.case.cls}] {r.case.name}: {r.message}")
    if not bad:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the cheap subset (tests/test_fuzz.py)")
    parser.add_argument("--out", help="write the summary (markdown) here")
    parser.add_argument("--only", help="comma-separated classes")
    parser.add_argument("--title", default=None, help="the summary's heading (counts and time are appended)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    only = set(args.only.split(",")) if args.only else None
    results = run(args.quick, only)
    seconds = time.perf_counter() - start
    title = (
        args.title or f"{'quick' if args.quick else 'full'} run"
    ) + f" ({len(results)} cases, {seconds:.0f} s, torch {torch.__version__})"
    text = report(results, title)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
