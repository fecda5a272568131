"""What the commands that take a generator (`spectral-ops trace`, `directions`) share: where G
comes from (`--ckpt`, or `--generator` by `GENERATOR_RULE`, and `--latent-dim`), the check of
its output on a probe batch, the pictures' `--columns` and `--scale`, the `--out` folder and the
settings each records beside its output.  Each raises ValueError naming the flag (the commands
print it as one line, exit 2).
"""

from __future__ import annotations

import argparse
import inspect
import os
import pkgutil
import reprlib
import sys
from pathlib import Path

import torch

from spectral_ops.lab.cli.errors import first_line
from spectral_ops.lab.io import writable_dir

__all__ = [
    "GENERATOR_RULE",
    "add_generator_arguments",
    "add_picture_arguments",
    "check_generator_output",
    "generator_from_args",
    "load_generator_from_checkpoint",
    "load_generator_from_spec",
    "output_dir",
    "recorded_settings",
]

GENERATOR_RULE = (
    "importable generator: MODULE:ATTR is used as the generator, called on (N, d) latents "
    "(an nn.Module, callable object or function; a class is built with no arguments); "
    "MODULE:ATTR() calls a factory with no arguments and uses what it returns"
)


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    """--ckpt or --generator (one of them), and --latent-dim: where a command's G comes from."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", metavar="PATH", help="checkpoint written by `spectral-ops train` or `demo`")
    src.add_argument("--generator", metavar="MODULE:ATTR", help=GENERATOR_RULE)
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (if the generator has no latent_dim)")


def add_picture_arguments(p: argparse.ArgumentParser) -> None:
    """--columns and --scale: images per row of a traversal grid, and the PNGs' pixel upscaling."""
    p.add_argument("--columns", type=int, default=9, help="images per row (default 9)")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNGs (default 2)")


def generator_from_args(args: argparse.Namespace):
    """(G, latent size d) from --ckpt / --generator and --latent-dim; ValueError naming the flag."""
    G = load_generator_from_checkpoint(args.ckpt) if args.ckpt else load_generator_from_spec(args.generator)
    d = args.latent_dim if args.latent_dim is not None else getattr(G, "latent_dim", None)
    if d is None:
        raise ValueError("the generator has no latent_dim attribute: pass --latent-dim")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"--latent-dim must be an integer >= 1, got {d!r}")
    return G, d


def load_generator_from_spec(spec: str):
    """'package.module:attr' -> the generator (see GENERATOR_RULE): attr itself, or attr() when
    attr is a class or the spec ends in '()'; a plain function is never called here."""
    if ":" not in spec:
        raise ValueError(f"--generator must look like package.module:attr, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    factory = attr.endswith("()")
    if factory:
        attr = attr[:-2]
    if not mod_name or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ValueError(f"--generator must look like package.module:attr or package.module:factory(), got {spec!r}")
    try:
        obj = pkgutil.resolve_name(f"{mod_name}:{attr}")
    except ImportError as exc:
        raise ValueError(f"--generator: cannot import module {mod_name!r}: {exc}") from None
    except AttributeError:
        if mod_name not in sys.modules:  # raised while importing the module, not by the lookup
            raise
        raise ValueError(f"--generator: module {mod_name!r} has no attribute {attr!r}") from None
    except ValueError:  # a module name resolve_name cannot parse ("my-pkg:G", "1st:G")
        raise ValueError(
            f"--generator must look like package.module:attr or package.module:factory(), got {spec!r}"
        ) from None
    if factory or inspect.isclass(obj):
        what = "factory" if factory else "class"
        if not callable(obj):
            raise ValueError(f"--generator: {mod_name}:{attr} is not callable, so not a {what}")
        try:
            obj = obj()
        except Exception as exc:  # e.g. a class whose constructor needs arguments
            raise ValueError(
                f"--generator: {what} {mod_name}:{attr} could not be called with no arguments "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from None
    if not callable(obj):
        raise ValueError(
            f"--generator: {spec!r} {'returned' if factory else 'is'} {reprlib.repr(obj)} "
            f"({type(obj).__name__}), not a generator (an nn.Module or a function of the latents)"
        )
    try:
        inspect.signature(obj).bind(None)
    except TypeError:
        hint = f"; to use it as a factory, write {mod_name}:{attr}()" if not factory else ""
        raise ValueError(
            f"--generator: {spec!r} cannot be called with a latent batch (its signature is "
            f"{inspect.signature(obj)}){hint}"
        ) from None
    except ValueError:  # no signature to read (a builtin): the probe call below decides
        pass
    return obj


def check_generator_output(y, d: int) -> None:
    """The generator's output for a (1, d) latent batch must be a (1, ...) floating tensor."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"the generator must return a tensor for a (1, {d}) latent batch, got a {type(y).__name__}")
    if y.ndim < 2 or y.shape[0] != 1 or not y.is_floating_point():
        raise ValueError(
            f"the generator must return a (1, ...) floating tensor for a (1, {d}) latent batch, got "
            f"{y.dtype} of shape {tuple(y.shape)}"
        )


def load_generator_from_checkpoint(path: str):
    """The generator stored in a training checkpoint (uses the trainer's own loader)."""
    if not os.path.isfile(path):
        raise ValueError(f"--ckpt: no such file {path!r}")
    try:
        from spectral_ops.lab import train
    except ImportError as exc:
        raise ValueError(f"--ckpt needs spectral_ops.lab.train, which failed to import: {exc}") from None
    loader = getattr(train, "load_generator", None)
    if loader is None:
        raise ValueError("--ckpt: this build's trainer has no load_generator(path)")
    try:
        G = loader(path)
    except Exception as exc:  # a corrupt or foreign file
        raise ValueError(f"--ckpt: cannot load a generator from {path!r}: {exc}") from None
    return G[0] if isinstance(G, tuple) else G


def output_dir(path: str) -> Path:
    """The --out folder as a Path, checked writable (created as needed); ValueError naming --out."""
    problem = writable_dir(path)
    if problem is not None:
        raise ValueError(f"--out: {problem}")
    return Path(path)


def recorded_settings(args: argparse.Namespace) -> dict:
    """The command's flags as its report records them (argparse's `command` and `_run` left out)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
