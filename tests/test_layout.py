"""The two wings: the library (algorithms, ops) never imports the application (spectral_ops.lab).

Checked two ways, so that a lazy import inside a function is caught too: an AST scan of every
library file, and importing every library module in a fresh interpreter.
"""
import ast
import pathlib
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
    offenders = {str(p.relative_to(ROOT)): [n for n in _imports(p) if n.startswith("spectral_ops.lab")]
                 for p in LIBRARY_FILES}
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
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('spectral_ops.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
