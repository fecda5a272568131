"""Command-line options generated from config dataclasses, so each option is named once.

A field whose metadata holds a ``help`` (and optionally ``choices``; `TrainConfig`'s fields) becomes
``--{prefix}{name-with-dashes}``: its type from the annotation, its choices and help from the
metadata, its default from the instance given.  A nested dataclass without such metadata (the
library's `RegularizerConfig`, whose fields are plain) gets its flags from a ``fields`` table in
the metadata of the field that nests it: {field name: (help, choices or None)}, only those fields
becoming flags.  The argparse dest is the field's dotted path (``reg_config.k``), and `from_flat`
turns a parsed namespace back into the (nested) dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable, Mapping

_TYPES = {"int": int, "float": float, "str": str}

#: {field name: (help, allowed values or None)}: the flags of a dataclass whose fields carry no metadata
FlagTable = Mapping[str, tuple[str, tuple | None]]


def fields_of(cls, table: FlagTable | None = None) -> list[tuple[dataclasses.Field, str, tuple | None]]:
    """(field, help, choices) for each field of `cls` that becomes a flag, in field order: those
    named in `table`, with its help and choices, or else those whose metadata holds a help."""
    if table is not None:
        return [(f, *table[f.name]) for f in dataclasses.fields(cls) if f.name in table]
    documented = [f for f in dataclasses.fields(cls) if f.metadata.get("help")]
    return [(f, f.metadata["help"], f.metadata.get("choices")) for f in documented]


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
    table: FlagTable | None = None,
) -> None:
    """Add one option per documented field of the dataclass `cls` (nested dataclass fields
    recurse with their own `prefix` and flag `fields` table from the metadata).  defaults: an
    instance of cls.  only: the field names to expose (default: all).  groups: metadata "group"
    -> argparse group.  table: the flags of a cls whose fields carry no help (see the module)."""
    defaults = cls() if defaults is None else defaults
    only = None if only is None else set(only)
    for f, help_line, choices in fields_of(cls, table):
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
                groups=groups,
                group=f.metadata.get("group", group),
                table=f.metadata.get("fields"),
            )
            continue
        target = (groups or {}).get(f.metadata.get("group", group), parser)
        flag = "--" + prefix + f.name.replace("_", "-")
        help_text = help_line + " (default: %(default)s)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        if kind == "bool":
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=value, help=help_text)
            continue
        target.add_argument(
            flag,
            dest=dest,
            type=_TYPES.get(kind, str),
            default=value,
            help=help_text,
            choices=tuple(choices) if choices is not None else None,
            metavar=None if choices is not None else f.name.upper(),
        )


def from_flat(cls, values: dict, base=None):
    """The dataclass `cls` from `values` keyed by dotted field paths ("reg_config.k"; other keys
    are ignored); fields absent from `values` keep their value in `base` (default: cls())."""
    base = cls() if base is None else base
    changes = {}
    for f in dataclasses.fields(cls):
        current = getattr(base, f.name)
        if dataclasses.is_dataclass(current):
            prefix = f.name + "."
            inner = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
            if inner:
                try:
                    changes[f.name] = from_flat(type(current), inner, current)
                except (TypeError, ValueError) as exc:  # name the nested field: "reg_config: k must ..."
                    raise type(exc)(f"{f.name}: {exc}") from None
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(base, **changes)


def add_cache_dir_option(parser) -> None:
    """--cache-dir: where the factor predictor the metrics use is cached (demo, eval)."""
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="factor-predictor cache (default: $SPECTRAL_OPS_CACHE or ~/.cache/spectral_ops)",
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
