"""The fuzz harness (bench/fuzz.py) in CI: every class but the CLI, each case checked against a
float64 explicit-Jacobian oracle.  No case may return a wrong number with no error (silent) or
change state it must leave alone (G's parameters and buffers, the caller's tensors, the global
RNG, files), refused calls included.  Fails on the previous main (8037337): 64 silent and 35
state cases in this quick set there (bench/results/fuzz.md, "Before")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

HARNESS = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"


@pytest.fixture(scope="module")
def quick_results():
    spec = importlib.util.spec_from_file_location("spectral_ops_fuzz", HARNESS)
    fuzz = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fuzz
    spec.loader.exec_module(fuzz)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = fuzz.run(quick=True, progress=False)
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop(spec.name, None)
    return fuzz, results


def _listed(fuzz, results, outcome):
    bad = [r for r in results if r.outcome == outcome]
    return f"{len(bad)} {outcome} cases:\n" + "\n".join(f"[{r.case.cls}] {r.case.name}: {r.message}" for r in bad)


def test_quick_set_covers_every_class_but_the_cli(quick_results):
    fuzz, results = quick_results
    assert {r.case.cls for r in results} == set(fuzz.CLASSES) - {"cli"}
    assert len(results) >= 250


def test_no_silent_wrong_numbers(quick_results):
    """A wrong value, a NaN, or a converged flag the oracle contradicts, with no error."""
    fuzz, results = quick_results
    assert not any(r.outcome == "silent" for r in results), _listed(fuzz, results, "silent")


def test_no_state_changed(quick_results):
    """G's parameters and buffers, the caller's tensors and the RNG as they were, refused calls too."""
    fuzz, results = quick_results
    assert not any(r.outcome == "state" for r in results), _listed(fuzz, results, "state")
