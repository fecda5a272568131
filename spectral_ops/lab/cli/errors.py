"""How a command refuses: one line on stderr, ``spectral-ops COMMAND: error: ...``, exit status 2."""

from __future__ import annotations

import sys


def fail(command: str, message: object) -> int:
    """Print `command`'s error line for `message` and return the exit status, 2."""
    print(f"spectral-ops {command}: error: {message}", file=sys.stderr)
    return 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or the exception's type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
