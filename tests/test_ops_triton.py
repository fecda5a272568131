"""Triton backend against reference.py.

Without a GPU the kernels run under the Triton interpreter, which needs TRITON_INTERPRET=1 before
triton is first imported: `test_triton_under_interpreter` runs this file in a fresh pytest
subprocess with it set, so the plain `pytest tests` covers them.  With a GPU they run directly.
Shapes are kept small (the interpreter is slow) and bf16 is skipped (the interpreter lacks it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from spectral_ops import ops
from spectral_ops.ops import reference

import test_ops as common

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RUNNABLE = "triton" in ops.available_backends(DEVICE)
pytestmark = pytest.mark.triton
needs_triton = pytest.mark.skipif(
    not RUNNABLE,
    reason="no triton here, or no GPU and TRITON_INTERPRET unset "
    "(test_triton_under_interpreter runs these in a subprocess)",
)

SHAPES = [(1, 1, 1), (3, 1, 6), (2, 4, 4), (2, 3, 37), (1, 8, 20)]
DTYPES = [torch.float64, torch.float32]


@pytest.mark.skipif(INTERPRET or torch.cuda.is_available(), reason="already running the Triton tests directly")
def test_triton_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            os.path.join(here, "test_ops_triton.py"),
        ],
        env=env,
        cwd=os.path.dirname(here),
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_orthonormalize(shape, dtype):
    common.check_orthonormalize_forward("triton", DEVICE, shape, dtype)
    common.check_orthonormalize_backward("triton", DEVICE, shape, dtype)


@needs_triton
def test_orthonormalize_matches_qr_and_handles_rank_deficiency():
    common.check_rank_deficient("triton", DEVICE, torch.float64)
    common.check_rank_deficient("triton", DEVICE, torch.float32)
    W = common.make_W(2, 5, 24, torch.float64, DEVICE, seed=5)
    with ops.use_backend("triton"):
        Q = ops.orthonormalize(W)
    q, r = torch.linalg.qr(W.transpose(-1, -2))
    expected = (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]).transpose(-1, -2)
    common.assert_close(Q, expected, common.tolerance("Q vs qr", torch.float64), "Q vs qr")


@needs_triton
@pytest.mark.parametrize("with_prev", [False, True], ids=["sign_max", "sign_prev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4), (2, 3, 37), (1, 8, 20)], ids=str)
def test_ritz_step(shape, dtype, with_prev):
    common.check_ritz_step("triton", DEVICE, shape, dtype, with_prev)


@needs_triton
@pytest.mark.parametrize("weights", reference.WEIGHT_KINDS)
@pytest.mark.parametrize("kind", reference.LOSS_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 37)], ids=str)
def test_alignment_loss(shape, dtype, kind, weights):
    common.check_alignment_loss("triton", DEVICE, shape, dtype, kind, weights)


@needs_triton
def test_half_inputs_compute_in_float32():
    shape = (2, 4, 20)
    common.check_orthonormalize_forward("triton", DEVICE, shape, torch.float16)
    common.check_ritz_step("triton", DEVICE, shape, torch.float16, with_prev=True)
    for kind in reference.LOSS_KINDS:
        common.check_alignment_loss("triton", DEVICE, shape, torch.float16, kind, "singular")


@needs_triton
def test_zero_inputs():
    common.check_zero_inputs("triton", DEVICE, torch.float64)
    common.check_zero_inputs("triton", DEVICE, torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_invariance(dtype):
    common.check_orthonormalize_scale_invariant("triton", DEVICE, dtype)
    common.check_ritz_step_scale_invariant("triton", DEVICE, dtype)
    common.check_alignment_loss_scale_invariant("triton", DEVICE, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_inputs(dtype):
    common.check_orthonormalize_non_finite("triton", DEVICE, dtype)
    common.check_ritz_step_non_finite("triton", DEVICE, dtype, with_prev=False)
    common.check_ritz_step_non_finite("triton", DEVICE, dtype, with_prev=True)


@needs_triton
def test_alignment_loss_rejects_bad_inputs():
    common.check_alignment_loss_rejects_bad_inputs("triton", DEVICE)


@needs_triton
def test_gradcheck_and_opcheck():
    from spectral_ops.ops.backends.triton import ops as triton_ops

    W = common.make_W(2, 3, 7, torch.float64, DEVICE).requires_grad_()
    V, S = common.unit_rows(2, 3, 7, torch.float64, DEVICE)
    V.requires_grad_(), S.requires_grad_()
    with ops.use_backend("triton"):
        assert torch.autograd.gradcheck(ops.orthonormalize, (W,))
        for kind in reference.LOSS_KINDS:
            assert torch.autograd.gradcheck(lambda v, s: ops.alignment_loss(v, s, kind, "singular"), (V, S))
    Q = reference.orthonormalize(W.detach())
    cases = [
        (triton_ops._orthonormalize, (W,)),
        (triton_ops._orthonormalize_backward, (torch.randn_like(Q), Q, W.detach())),
        (triton_ops._ritz_step, (Q, 3.0 * Q + 0.1 * W.detach(), None)),
        (triton_ops._ritz_step, (Q, 3.0 * Q + 0.1 * W.detach(), V.detach())),
        (triton_ops._alignment_loss, (V, S, "offdiag", "singular")),
        (triton_ops._alignment_loss, (V, S, "l1", "uniform")),
        (
            triton_ops._alignment_loss_backward,
            (torch.rand(2, dtype=torch.float64, device=DEVICE), V.detach(), S.detach(), "assigned", "singular"),
        ),
    ]
    # Under the interpreter, AOT dispatch traces into the triton_op body with fake tensors, which the
    # interpreter cannot launch on: that check runs on GPUs only.
    checks = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        () if INTERPRET else ("test_aot_dispatch_dynamic",)
    )
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=checks)


@needs_triton
@pytest.mark.skipif(
    INTERPRET,
    reason="torch.compile traces into the triton_op body, which the interpreter cannot "
    "run on fake tensors; runs on GPUs (bench/gpu_check.sh)",
)
def test_torch_compile_fullgraph():
    common.check_compile("triton", DEVICE)


@needs_triton
def test_bad_inputs():
    common.test_bad_inputs("triton", DEVICE)
