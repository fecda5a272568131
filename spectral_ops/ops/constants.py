"""The constants shared with the C++/CUDA kernels, read from constants.def at import.

constants.def (next to this file) is the only definition: C++ includes it as an X-macro list
(csrc/common/macros.h), this module parses its SPECTRAL_CONSTANT(NAME, value) lines with a regex.
VALUES maps every name to its int or float; the names used in Python are also module attributes.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import cast

_LINE = re.compile(r"^\s*SPECTRAL_CONSTANT\(\s*([A-Z][A-Z0-9_]*)\s*,\s*([^)\s]+)\s*\)\s*(?://.*)?$")
_INT = re.compile(r"^[+-]?\d+$")


def parse(text: str) -> dict[str, int | float]:
    """NAME -> value for each SPECTRAL_CONSTANT line of `text`; other lines must be blank or // comments."""
    values: dict[str, int | float] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"constants.def:{number}: expected SPECTRAL_CONSTANT(NAME, value), got {line!r}")
        name, literal = match.groups()
        if name in values:
            raise ValueError(f"constants.def:{number}: {name} is defined twice")
        values[name] = int(literal) if _INT.match(literal) else float(literal)
    return values


VALUES = parse(resources.files(__package__).joinpath("constants.def").read_text(encoding="utf-8"))

MAX_CUDA_K: int = cast(int, VALUES["MAX_CUDA_K"])  # an int literal in constants.def
RANK_TOLERANCE_FLOAT32: float = VALUES["RANK_TOLERANCE_FLOAT32"]
RANK_TOLERANCE_FLOAT64: float = VALUES["RANK_TOLERANCE_FLOAT64"]
