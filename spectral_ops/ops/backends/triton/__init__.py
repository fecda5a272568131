"""Triton kernels for the fused ops, one program per sample.

AVAILABLE is False when triton cannot be imported (UNAVAILABLE_REASON says why).  INTERPRET is
True when TRITON_INTERPRET=1 was set before triton was imported: the kernels then run on CPU
tensors (slowly), which is how they are tested without a GPU.
"""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401 - imported only to learn whether triton is installed

    AVAILABLE = True
    UNAVAILABLE_REASON = ""
except ImportError as error:
    AVAILABLE = False
    UNAVAILABLE_REASON = str(error)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if AVAILABLE:
    try:
        from spectral_ops.ops.backends.triton.ops import alignment_loss, orthonormalize, ritz_step  # noqa: F401 - re-exported
    except ImportError as error:
        AVAILABLE, UNAVAILABLE_REASON = False, str(error)
