"""Host syncs of the spectral regularizer on a GPU: counts under torch.cuda.set_sync_debug_mode("warn").

    python bench/gpu_syncs.py          # on a GPU; without one the calls run on the CPU and nothing is counted

A DCGAN generator (latent 64, 32x32, B=32) and SpectralRegularizer(64, every=2) with its other
defaults: the first call (computed, with the generator probe), the second (skipped), the third
(computed, probe cached), the fourth (skipped), and the backward of a computed value.  Each line
says how many synchronizing CUDA operations ran, and the library lines that caused them (the
warning's Python frame), most frequent first.  A skipped call should need none.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, uninstalled
from generators import DCGAN

from spectral_ops import SpectralRegularizer, jacobian_topk

CUDA = torch.cuda.is_available()
B, D, SIZE = (8, 16, 16) if os.environ.get("BENCH_TINY") == "1" else (32, 64, 32)  # BENCH_TINY=1: a dry run
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counted(label: str, fn):
    """Run fn with sync debugging on; print the count and the top sites; return fn's result."""
    if CUDA:
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every sync, also from a line that synced before
        if CUDA:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            if CUDA:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = collections.Counter(f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}" for w in syncs)
    top = ", ".join(f"{site} x{n}" for site, n in sites.most_common(6))
    print(f"syncs: {label}: {len(syncs) if CUDA else 'n/a (no CUDA)'}" + (f"  [{top}]" if top else ""))
    return out


def main() -> int:
    torch.manual_seed(0)
    G = DCGAN(D, size=SIZE).to(DEVICE)
    z = torch.randn(B, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    reg = SpectralRegularizer(D, every=2).to(DEVICE)
    print(f"syncs: device {DEVICE}" + (f" ({torch.cuda.get_device_name()})" if CUDA else ""))
    counted("SpectralRegularizer computed call, first (probes G)", lambda: reg(G, z))
    counted("SpectralRegularizer skipped call, first", lambda: reg(G, z))
    value = counted("SpectralRegularizer computed call, steady", lambda: reg(G, z))
    counted("backward of the computed value", lambda: value.backward())
    counted("SpectralRegularizer skipped call, steady", lambda: reg(G, z))
    counted(
        "jacobian_topk(method='krylov', k=4, iters=8), steady",
        lambda: jacobian_topk(G, z, 4, iters=8, tol=1e-3, method="krylov"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
