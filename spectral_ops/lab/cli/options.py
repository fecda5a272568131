"""Command-line options generated from config dataclasses, so each option is named once.

A field made with `spectral_ops.config.option(default, help, choices)` becomes
``--{prefix}{name-with-dashes}``: its type from the annotation, its choices and help from the
metadata, its default from the instance given.  The argparse dest is the field's dotted path
(``reg_config.k``), and `spectral_ops.config.from_flat` turns a parsed namespace back into the
(nested) dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable

_TYPES = {"int": int, "float": float, "str": str}


def fields_of(cls) -> Iterable[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def add_options(
    parser,
    cls,
    defaults=None,
    *,
    prefix: str = "",
    path: str = "",
    only: Iterable[str] | None = None,
    groups: dict | None = None,
    group: str | None = None,
) -> None:
    """Add one option per documented field of the dataclass `cls` (nested dataclass fields
    recurse with their own `prefix` from the metadata).  defaults: an instance of cls.
    only: the field names to expose (default: all).  groups: metadata "group" -> argparse group."""
    defaults = cls() if defaults is None else defaults
    only = None if only is None else set(only)
    for f in fields_of(cls):
        if only is not None and f.name not in only:
            continue
        value = getattr(defaults, f.name)
        dest = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            add_options(
                parser,
                type(value),
                value,
                prefix=f.metadata.get("prefix", prefix),
                path=dest + ".",
                only=f.metadata.get("only"),
                groups=groups,
                group=f.metadata.get("group", group),
            )
            continue
        target = (groups or {}).get(f.metadata.get("group", group), parser)
        flag = "--" + prefix + f.name.replace("_", "-")
        help_text = f.metadata["help"] + " (default: %(default)s)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        if kind == "bool":
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=value, help=help_text)
            continue
        choices = f.metadata.get("choices")
        target.add_argument(
            flag,
            dest=dest,
            type=_TYPES.get(kind, str),
            default=value,
            help=help_text,
            choices=tuple(choices) if choices is not None else None,
            metavar=None if choices is not None else f.name.upper(),
        )


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_threads(args) -> None:
    """torch.set_num_threads(--threads) when given; ValueError (exit 2) below 1."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


DEVICES = ("cpu", "cuda")


def add_device_option(parser) -> None:
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where the generator runs (default cpu)")


def device_from_args(args):
    """The torch.device of --device; ValueError (exit 2) for cuda without a usable GPU."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    return torch.device(args.device)
