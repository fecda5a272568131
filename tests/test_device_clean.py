"""Device cleanliness of the library, checked without a GPU: an AST scan of spectral_ops/ (the
application, spectral_ops/lab/, excluded) for tensors created on the CPU by accident.

A tensor factory (`torch.arange`, `zeros`, `randn`, ..., and `torch.Generator(...)`) called
without a `device=` keyword makes a CPU tensor.  On CUDA inputs that breaks as soon as it meets
a device tensor (a CUDA mask indexing a CPU `arange` raised in `krylov.block_lanczos`), or costs
a host-to-device copy per call.  A finding is such a call that is not moved at once: chained
into `.to(...)` with a device (a tensor, a device, or `device=`; `.to(dtype)` alone does not
move it), possibly through indexing, attribute access or arithmetic (`torch.randperm(B)[:n]
.sort().values.to(device)`), or passed to a call that moves it (`MOVING_CALLS`).  Where a
device-less index tensor is bound to a name, indexing with it or into it is reported as well.
The deliberate CPU tensors are in `ALLOWED`, each with its reason; an entry that matches
nothing fails too, so the list stays exact.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "spectral_ops"
FACTORIES = frozenset(
    {
        "arange",
        "zeros",
        "ones",
        "full",
        "empty",
        "eye",
        "tensor",
        "as_tensor",
        "randn",
        "rand",
        "randint",
        "randperm",
        "linspace",
        "logspace",
        "Generator",
    }
)
# Calls that put a tensor argument on the right device themselves.
MOVING_CALLS = {
    "register_buffer": "a module buffer follows Module.to(device) with its module",
    "select_rows": "latents.select_rows moves its index to the device of the row arguments it subsets",
}
DTYPE_NAMES = frozenset(
    {
        "float16",
        "float32",
        "float64",
        "bfloat16",
        "half",
        "float",
        "double",
        "int8",
        "int16",
        "int32",
        "int64",
        "long",
        "int",
        "bool",
        "uint8",
        "complex64",
        "complex128",
    }
)
# (file relative to the repository, enclosing function, factory) -> why a CPU tensor is right there.
ALLOWED = {
    (
        "spectral_ops/regularizer.py",
        "default_basis",
        "randn",
    ): "draws from a CPU torch.Generator so the basis is the same on every device; orthonormalized in "
    "float64 and moved with .to(device=device) in the return statement",
    (
        "spectral_ops/regularizer.py",
        "_rows",
        "randperm",
    ): "the regularized rows are drawn from a seeded CPU generator (the same rows on every device and "
    "process), then copied to the device without a read-back (pinned, non_blocking)",
    (
        "spectral_ops/baselines/peers.py",
        "_rademacher",
        "randint",
    ): "drawn on the CPU so a user's CPU torch.Generator works for latents on any device; moved with "
    ".to(device=z.device) on the next line",
    (
        "spectral_ops/directions.py",
        "global_directions",
        "Generator",
    ): "a CPU generator for reproducible latents on every device; its draws are moved with "
    ".to(dtype=dtype, device=device) / .to(latents)",
    (
        "spectral_ops/directions.py",
        "_solve",
        "Generator",
    ): "a CPU generator for the start basis and the Hutchinson probes; the draws are moved with "
    ".to(device=latents.device, ...) and .to(zf)",
    (
        "spectral_ops/trajectory.py",
        "_complete_init",
        "Generator",
    ): "a CPU generator for the rows completing a warm start; the draws are moved with .to(init)",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    function: str
    factory: str
    what: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.path, self.function, self.factory

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): {self.what}"


def _factory_name(node: ast.AST) -> str | None:
    """'arange' for torch.arange(...) (and torch.Generator(...)), else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES:
        base = node.func.value
        if isinstance(base, ast.Name) and base.id == "torch":
            return node.func.attr
    return None


def _is_dtype(arg: ast.AST) -> bool:
    """An expression that names a dtype: torch.float64, x.dtype, a name like cdtype or dtype."""
    if isinstance(arg, ast.Attribute):
        return arg.attr == "dtype" or (
            isinstance(arg.value, ast.Name) and arg.value.id == "torch" and arg.attr in DTYPE_NAMES
        )
    return isinstance(arg, ast.Name) and "dtype" in arg.id.lower()


def _to_moves(call: ast.Call) -> bool:
    """Whether a .to(...) call sets a device: device=, or a positional tensor/device (not a dtype)."""
    if any(kw.arg == "device" for kw in call.keywords):
        return True
    return bool(call.args) and not _is_dtype(call.args[0])


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _moved(node: ast.AST, parents: dict) -> bool:
    """Whether the value of `node` reaches a device-setting .to(...) or a moving call directly."""
    while True:
        parent = parents.get(node)
        if parent is None:
            return False
        if isinstance(parent, ast.Attribute):
            call = parents.get(parent)
            if parent.attr == "to" and isinstance(call, ast.Call) and call.func is parent:
                return _to_moves(call)
            node = call if isinstance(call, ast.Call) and call.func is parent else parent
            continue
        if isinstance(parent, ast.Call):
            if node in parent.args or any(kw.value is node for kw in parent.keywords):
                return _call_name(parent) in MOVING_CALLS
            return False
        if isinstance(parent, (ast.Subscript, ast.BinOp, ast.UnaryOp)) and getattr(parent, "slice", None) is not node:
            node = parent
            continue
        if isinstance(parent, ast.IfExp) and parent.test is not node:  # a branch's value passes through
            node = parent
            continue
        return False


def _parents(tree: ast.AST) -> dict:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _functions(tree: ast.AST) -> dict:
    """node -> the name of the innermost function holding it (ast.walk visits outer ones first)."""
    owner = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if node is not fn:
                    owner[node] = fn.name
    return owner


def scan_source(source: str, path: str) -> list[Finding]:
    """Findings for one file's source (see the module docstring)."""
    tree = ast.parse(source)
    parents, owner = _parents(tree), _functions(tree)
    findings, unplaced = [], {}  # unplaced: (function, name) -> factory call bound to that name
    for node in ast.walk(tree):
        name = _factory_name(node)
        if name is None or any(kw.arg == "device" for kw in node.keywords) or _moved(node, parents):
            continue
        function = owner.get(node, "<module>")
        findings.append(
            Finding(path, node.lineno, function, name, f"torch.{name}(...) without device= and not moved to a device")
        )
        target = parents.get(node)
        if isinstance(target, ast.Assign) and name != "Generator":
            for t in target.targets:
                if isinstance(t, ast.Name):
                    unplaced[(function, t.id)] = name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript):
            continue
        function = owner.get(node, "<module>")
        for part, role in ((node.value, "indexed"), (node.slice, "used as an index")):
            if isinstance(part, ast.Name) and (function, part.id) in unplaced:
                findings.append(
                    Finding(
                        path,
                        node.lineno,
                        function,
                        unplaced[(function, part.id)],
                        f"'{part.id}' (made without a device) is {role}: a device mask or "
                        "tensor meets a CPU index tensor",
                    )
                )
    return findings


# Not scanned: the application, and spectral_ops/testing, whose known-answer generators are modules
# built on the CPU and moved with .to(device) as torch's own layers are (their gate harness,
# run_gate, runs on the CPU).
NOT_SCANNED = ("lab", "testing")


def library_files() -> list[pathlib.Path]:
    return sorted(p for p in LIBRARY.rglob("*.py") if p.relative_to(LIBRARY).parts[0] not in NOT_SCANNED)


def scan_library() -> list[Finding]:
    out = []
    for path in library_files():
        out += scan_source(path.read_text(), path.relative_to(ROOT).as_posix())
    return out


# ---- the library ------------------------------------------------------------------------------------
def test_scans_the_whole_library():
    files = {p.relative_to(ROOT).as_posix() for p in library_files()}
    assert {
        "spectral_ops/krylov.py",
        "spectral_ops/power.py",
        "spectral_ops/baselines/peers.py",
        "spectral_ops/ops/reference.py",
        "spectral_ops/topk.py",
        "spectral_ops/dense.py",
        "spectral_ops/cost.py",
    } <= files
    assert not any(f.startswith("spectral_ops/lab/") for f in files)


def test_library_makes_no_tensor_off_the_inputs_device():
    bad = [f for f in scan_library() if f.key not in ALLOWED]
    assert not bad, (
        "tensors created on the CPU (add device=..., or move them at once; a deliberate CPU tensor "
        "goes into ALLOWED with its reason):\n" + "\n".join(map(str, bad))
    )


def test_every_allowed_cpu_tensor_still_exists():
    used = {f.key for f in scan_library()}
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"ALLOWED entries that match no code any more (remove them): {stale}"


def test_allowed_cpu_tensors_are_never_indexed_raw():
    raw = [f for f in scan_library() if "index" in f.what and f.key in ALLOWED]
    assert not raw, "\n".join(map(str, raw))


# ---- the scanner finds what it must ---------------------------------------------------------------
BEFORE_THE_FIX = """
import torch
def block_lanczos(X, B, k, d):
    vectors = torch.full((B,), 1, dtype=torch.long)
    rows = torch.arange(B)
    done = X.abs().amax(-1) > 0
    idx = rows[done]
    return idx, vectors
"""


def test_flags_a_cpu_arange_indexed_by_a_mask():
    findings = scan_source(BEFORE_THE_FIX, "krylov.py")
    lines = {(f.line, f.factory) for f in findings}
    assert (4, "full") in lines and (5, "arange") in lines
    assert any(f.line == 7 and "'rows'" in f.what and "indexed" in f.what for f in findings), findings


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("X = ops.orthonormalize(torch.randn(1, k, d, generator=gen).to(cdtype))", True),  # dtype only: still CPU
        ("X = ops.orthonormalize(torch.randn(1, k, d, generator=gen).to(dtype=cdtype))", True),
        ("X = torch.randn(1, k, d).to(torch.float32)", True),
        ("products(X, torch.arange(B))", True),  # passed on, unmoved
        ("rows = torch.arange(B, device=z.device)", False),
        ("X = torch.randn(1, k, d).to(device=z.device, dtype=cdtype)", False),
        ("X = torch.randn(1, k, d).to(z)", False),
        ("rows = torch.randperm(B, generator=gen)[:n].sort().values.to(device)", False),  # chained, then moved
        ("V = (torch.randint(0, 2, (B, p, d), generator=gen) * 2 - 1).to(zf)", False),  # arithmetic, then moved
        ("self.register_buffer('step', torch.zeros((), dtype=torch.long))", False),
        ("gen = torch.Generator(device='cpu')", False),
        ("gen = torch.Generator()", True),
        ("x = other.arange(3)", False),
        ("H = select_rows(G, slice(0, 2) if B > 1 else torch.tensor([0, 0]))", False),  # a moving call
        ("H = pick(G, slice(0, 2) if B > 1 else torch.tensor([0, 0]))", True),  # not torch's
    ],
)
def test_scanner_rules(source, flagged):
    src = (
        "import torch\ndef f(B, k, d, n, z, gen, zf, p, products, device, cdtype, ops, self, other, G, pick):\n    "
        + source
    )
    assert bool(scan_source(src, "x.py")) == flagged, scan_source(src, "x.py")
