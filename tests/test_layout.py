"""The two wings: the library (algorithms, ops) never imports the application (spectral_ops.lab).

Checked two ways, so that a lazy import inside a function is caught too: an AST scan of every
library file, and importing every library module in a fresh interpreter.
"""

import ast
import importlib.metadata
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "spectral_ops"
LIBRARY_FILES = sorted(p for p in ROOT.rglob("*.py") if "lab" not in p.relative_to(ROOT).parts)


def _module_name(path: pathlib.Path) -> str:
    parts = ("spectral_ops",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, source: str | None = None) -> list[str]:
    """Absolute names of every module an `import` or `from ... import` in the file refers to
    (source: the file's text, default read from path)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_the_library_files_never_import_the_application():
    assert len(LIBRARY_FILES) > 10
    offenders = {
        str(p.relative_to(ROOT)): [n for n in _imports(p) if n.startswith("spectral_ops.lab")] for p in LIBRARY_FILES
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_scan_sees_relative_and_lazy_imports():
    """The scan itself can fail: a relative and a function-level import of the application."""
    source = "def f():\n    from .lab import train\n    import spectral_ops.lab.viz\n"
    names = [n for n in _imports(ROOT / "power.py", source) if n.startswith("spectral_ops.lab")]
    assert "spectral_ops.lab" in names and "spectral_ops.lab.viz" in names
    nested = [n for n in _imports(ROOT / "ops" / "__init__.py", "from ..lab import io\n")]
    assert "spectral_ops.lab.io" in nested


def test_importing_every_library_module_loads_nothing_of_the_application():
    modules = [_module_name(p) for p in LIBRARY_FILES if "triton" not in p.parts]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('spectral_ops.lab')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Imports of the library wing that are not requirements, each guarded where it is imported.
OPTIONAL_IMPORTS = {
    "triton": "the Triton backend, loaded only where triton is installed (ops/backends/triton)",
    "tqdm": "progress bars, with a plain fallback where tqdm is missing (progress.py)",
}


def _requirement_name(line: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_installed_library_requires_torch_alone_and_imports_nothing_else():
    """The installed distribution's requirements (without an extra) are torch alone, and every
    module the library wing imports is the standard library, spectral_ops, torch, or an optional
    import that is guarded where it is made.  Before: numpy, tqdm and pillow were requirements,
    though only the application imports them, and the library imported tqdm unguarded."""
    requires = importlib.metadata.requires("spectral_ops") or []
    core = {_requirement_name(r) for r in requires if "extra ==" not in r}
    assert core == {"torch"}, requires
    third_party = set()
    for path in LIBRARY_FILES:
        for name in _imports(path):
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in ("spectral_ops", "__future__"):
                third_party.add(top)
    assert third_party - {"torch"} <= set(OPTIONAL_IMPORTS), third_party


def test_the_library_imports_and_shows_progress_without_its_optional_modules():
    """In an interpreter where tqdm, numpy and PIL cannot be imported, the library imports and a
    progress bar falls back to plain lines."""
    code = (
        "import sys\n"
        "for m in ('tqdm', 'numpy', 'PIL'):\n    sys.modules[m] = None\n"
        "import torch, spectral_ops\n"
        "from spectral_ops.progress import progress_bar\n"
        "bar = progress_bar(3, 'work')\n"
        "for _ in range(3):\n    bar.update(1)\n"
        "bar.close()\n"
        "G = torch.nn.Linear(4, 6)\n"
        "t = spectral_ops.trace_trajectory(G, torch.randn(2, 4), steps=2, progress=True)\n"
        "print(type(bar).__name__, tuple(t.z.shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["_PlainBar", "(3,", "2,", "4)"], run.stdout
    assert "work: 3/3" in run.stderr
