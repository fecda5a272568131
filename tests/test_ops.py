"""Fused ops (orthonormalize, ritz_step, alignment_loss) on every backend against reference.py.

The checks are functions of (backend, device) so that test_ops_triton.py reuses them.  Here they
run on the compiled CPU backend ("cpp"), and on "cuda"/"triton" when a GPU is present.
"""

from __future__ import annotations

import math

import pytest
import torch

from spectral_ops import ops
from spectral_ops.ops import reference

HAS_GPU = torch.cuda.is_available()
HAS_CPP = "cpp" in ops.available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="spectral_ops._C not built")

# "cpp" runs the best instruction set this CPU has (AVX2 + FMA on x86-64 machines that have it);
# "cpp-baseline" forces the portable copy of the same kernels, so both compiled copies are tested.
BACKEND_DEVICES = [
    pytest.param("cpp", "cpu", marks=needs_cpp, id="cpp"),
    pytest.param("cpp-baseline", "cpu", marks=needs_cpp, id="cpp-baseline"),
    pytest.param(
        "cuda",
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(
            not (HAS_GPU and "cuda" in ops.available_backends()), reason="no GPU, or built without FORCE_CUDA=1"
        ),
    ),
]

# (B, k, d): k=1, k=d, d=1, d not a multiple of any block size, B=1, k at the CUDA limit.
SHAPES = [(1, 1, 1), (3, 1, 7), (2, 4, 4), (1, 3, 37), (5, 7, 130), (2, 32, 40)]
LARGE_SHAPES = [(2, 5, 1024), (2, 33, 70)]  # d at the CUDA target; k above the CUDA limit (CPU only)

# (atol, rtol) per quantity and dtype: every element must satisfy |actual - expected| <= atol +
# rtol * |expected|.  Set at about 4x the largest error measured over this file's shapes and seeds
# (and test_ops_triton.py's), on cpp (AVX2 + FMA), cpp-baseline and triton (TRITON_INTERPRET=1 on
# CPU), each against reference.py; the measured maxima are in the comments.  Half dtypes compute in
# float32 and round once, so two backends may differ by one ulp of the stored result: rtol = eps
# there, and atol is 4x what was measured beyond that ulp (2.4e-7, four float16 subnormal steps,
# where nothing was).  "orth" is max |Q Q^T - I|; "Q vs qr" is against torch.linalg.qr in float64.
# Errors of V and Q_next are the eigenvector conditioning (relative gaps 20%, k up to 32), not the
# kernels: float32 reference.py and cpp differ by 8e-5 there.  On a GPU (an H200) the cuda backend
# and triton passed this table except the cuda values at k = 32 (CUDA_TOL).
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
HALF_FLOOR = 2.4e-7
TOL = {
    "Q": {F64: (1e-15, 0), F32: (7e-7, 0), F16: (HALF_FLOOR, 2**-10), BF16: (HALF_FLOOR, 2**-7)},
    # measured 2.6e-16, 1.8e-7; half: 3.1e-5 / 6.1e-5, nothing beyond one ulp
    "orth": {F64: (4e-15, 0), F32: (1e-6, 0), F16: (2e-3, 0), BF16: (1.1e-2, 0)},
    # measured 8.9e-16, 2.5e-7, 4.9e-4, 2.6e-3
    "Q vs qr": {F64: (1.5e-15, 0), F32: (2e-7, 0)},  # measured 3.3e-16, 4.4e-8
    "grad_W": {F64: (3e-14, 0), F32: (9e-6, 0)},  # measured 7.4e-15, 2.2e-6
    "V": {F64: (1.6e-13, 0), F32: (3.3e-4, 0), F16: (5e-5, 2**-10)},
    # measured 3.9e-14, 8.2e-5; float16 2.4e-4, 1.2e-5 beyond one ulp
    "lam": {F64: (5e-14, 0), F32: (3.5e-5, 0), F16: (HALF_FLOOR, 2**-10)},
    # measured 1.2e-14, 8.6e-6 (values up to 10); float16 0; lam vs eigvalsh 1.1e-14, 4.9e-6, 3.8e-3 (one ulp)
    "res": {F64: (2e-15, 0), F32: (1.2e-6, 0), F16: (2.6e-7, 2**-10)},
    # measured 4.4e-16, 3.0e-7; float16 2.4e-7, 6.5e-8 beyond one ulp
    "Q_next": {F64: (1e-13, 0), F32: (2.6e-4, 0), F16: (2.3e-5, 2**-10)},
    # measured 2.3e-14, 6.5e-5; float16 2.4e-4, 5.6e-6 beyond one ulp
    "loss": {F64: (2e-15, 0), F32: (6.5e-7, 0), F16: (HALF_FLOOR, 2**-10)},
    # measured 4.4e-16, 1.6e-7; float16 2.4e-4, nothing beyond one ulp
    "grad_V": {F64: (3e-15, 0), F32: (2e-6, 0), F16: (HALF_FLOOR, 2**-10)},
    # measured 7.8e-16, 4.8e-7; float16 2.7e-4, 2.8e-8 beyond one ulp
    "grad_S": {F64: (7e-15, 0), F32: (3.5e-6, 0), F16: (1.2e-6, 2**-10)},
    # measured 1.6e-15, 8.5e-7; float16 6.0e-5, 3.0e-7 beyond one ulp
}


# Measured on an H200: the cuda backend's round-robin Jacobi on a thread block (float32, k=32,
# values up to 10) is 4.5e-5 from the reference, against 8.6e-6 for the CPU's QL.
CUDA_TOL = {"lam": {F32: (1.8e-4, 0)}}


def tolerance(quantity, dtype, backend=None):
    """(atol, rtol) for `quantity` computed in `dtype` (see TOL; CUDA_TOL for the cuda backend)."""
    if backend == "cuda" and dtype in CUDA_TOL.get(quantity, {}):
        return CUDA_TOL[quantity][dtype]
    return TOL[quantity][dtype]


def backend_context(backend):
    """ops.use_backend(backend), where "cpp-baseline" is the cpp backend on its baseline ISA."""
    if backend == "cpp-baseline":
        return ops.use_backend("cpp", cpu_isa="baseline")
    return ops.use_backend(backend)


def make_W(B, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Full-rank with a moderate condition number, so the maths (not conditioning) sets the error.
    W = torch.randn(B, k, d, generator=g, dtype=torch.float64)
    W = W + 0.5 * torch.eye(k, d, dtype=torch.float64) * math.sqrt(d)
    return W.to(device=device, dtype=dtype)


def make_ritz_inputs(B, k, d, dtype, device, seed=0, with_prev=False):
    """Q orthonormal near the top-k eigenspace of a PSD M with well-separated spectrum; MQ = Q M."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=torch.float64))
    values = 10.0 * 0.8 ** torch.arange(d, dtype=torch.float64)
    M = basis @ torch.diag_embed(values.expand(B, d)) @ basis.transpose(-1, -2)
    top = basis[:, :, :k].transpose(-1, -2)  # [B, k, d]
    mix, _ = torch.linalg.qr(torch.randn(B, k, k, generator=g, dtype=torch.float64))
    Q = reference.orthonormalize(mix @ top + 0.05 * torch.randn(B, k, d, generator=g, dtype=torch.float64))
    MQ = Q @ M
    V_prev = torch.randn(B, k, d, generator=g, dtype=torch.float64) if with_prev else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return cast(Q), cast(MQ), cast(V_prev)


def unit_rows(B, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, k, d, generator=g, dtype=torch.float64)
    V = reference.orthonormalize(V)
    S = torch.rand(B, k, generator=g, dtype=torch.float64).sort(dim=-1, descending=True).values + 0.1
    return V.to(device=device, dtype=dtype), S.to(device=device, dtype=dtype)


def assert_close(actual, expected, tol, what=""):
    """|actual - expected| <= atol + rtol * |expected| elementwise, tol = (atol, rtol)."""
    atol, rtol = tol
    assert actual.dtype == expected.dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if not actual.numel():
        return
    a, e = actual.double(), expected.double().to(actual.device)
    excess = (a - e).abs() - (atol + rtol * e.abs())
    worst = int(excess.flatten().argmax())
    assert excess.max().item() <= 0, (
        f"{what}: |{a.flatten()[worst].item():.9g} - {e.flatten()[worst].item():.9g}| > "
        f"{atol:.3g} + {rtol:.3g} * |expected| (max abs error "
        f"{(a - e).abs().max().item():.3g})"
    )


def assert_orthonormal(Q, tol):
    atol, _ = tol
    gram = Q.double() @ Q.double().transpose(-1, -2)
    eye = torch.eye(Q.shape[1], dtype=torch.float64, device=Q.device)
    err = (gram - eye).abs().max().item()
    assert err <= atol, f"max |Q Q^T - I| {err:.3g} > {atol:.3g}"


# ---------------------------------------------------------------------------------------------
# Checks shared with test_ops_triton.py
# ---------------------------------------------------------------------------------------------


def check_orthonormalize_forward(backend, device, shape, dtype):
    W = make_W(*shape, dtype, device)
    with backend_context(backend):
        Q = ops.orthonormalize(W)
    expected = reference.orthonormalize(W.cpu()).to(device)
    assert Q.shape == W.shape and Q.dtype == W.dtype and Q.device == W.device
    assert_close(Q, expected, tolerance("Q", dtype), "Q")
    assert_orthonormal(Q, tolerance("orth", dtype))


def check_orthonormalize_backward(backend, device, shape, dtype):
    W = make_W(*shape, dtype, device).requires_grad_()
    grad = torch.randn(W.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    with backend_context(backend):
        Q = ops.orthonormalize(W)
    (grad_W,) = torch.autograd.grad(Q, W, grad)
    W_ref = W.detach().cpu().double().requires_grad_()
    (expected,) = torch.autograd.grad(reference.orthonormalize(W_ref), W_ref, grad.cpu().double())
    assert_close(grad_W.double().cpu(), expected, tolerance("grad_W", dtype), "grad_W")


def check_ritz_step(backend, device, shape, dtype, with_prev):
    Q, MQ, V_prev = make_ritz_inputs(*shape, dtype, device, with_prev=with_prev)
    with backend_context(backend):
        out = ops.ritz_step(Q, MQ, V_prev)
    expected = reference.ritz_step(Q.cpu(), MQ.cpu(), None if V_prev is None else V_prev.cpu())
    for name, actual, ref in zip(("V", "lam", "res", "Q_next"), out, expected):
        assert actual.shape == ref.shape and actual.device.type == device
        assert_close(actual, ref.to(device), tolerance(name, dtype, backend), name)
    # Independent oracle for the values: eigvalsh of the projected matrix.
    H = Q.double() @ MQ.double().transpose(-1, -2)
    oracle = torch.linalg.eigvalsh(0.5 * (H + H.transpose(-1, -2))).flip(-1)
    assert_close(out[1].double(), oracle, tolerance("lam", dtype, backend), "lam vs eigvalsh")


def check_alignment_loss(backend, device, shape, dtype, kind, weights):
    V, S = unit_rows(*shape, dtype, device)
    V.requires_grad_(), S.requires_grad_()
    with backend_context(backend):
        loss = ops.alignment_loss(V, S, kind, weights)
    grad = torch.rand(shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device, dtype)
    grad_V, grad_S = torch.autograd.grad(loss, (V, S), grad)
    V_ref = V.detach().cpu().double().requires_grad_()
    S_ref = S.detach().cpu().double().requires_grad_()
    expected = reference.alignment_loss(V_ref, S_ref, kind, weights)
    exp_V, exp_S = torch.autograd.grad(
        expected, (V_ref, S_ref), grad.cpu().double(), allow_unused=True, materialize_grads=True
    )
    assert loss.shape == (shape[0],) and loss.dtype == dtype
    assert_close(loss.double().cpu(), expected.detach(), tolerance("loss", dtype), "loss")
    assert_close(grad_V.double().cpu(), exp_V, tolerance("grad_V", dtype), "grad_V")
    assert_close(grad_S.double().cpu(), exp_S, tolerance("grad_S", dtype), "grad_S")


def rank_deficient_W(scale=1.0):
    """[4, 3, 6] float64: an all-zero sample, then repeated, zero and dependent rows (times scale)."""
    d = 6
    W = torch.zeros(4, 3, d, dtype=torch.float64)
    W[1, 0] = torch.arange(1.0, d + 1)  # row 1 = 2 * row 0, row 2 zero
    W[1, 1] = 2 * W[1, 0]
    W[2, 0, 0] = 1.0  # e0, then a dependent row, then e2
    W[2, 1, 0] = -3.0
    W[2, 2, 2] = 1.0
    W[3] = torch.randn(3, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    W[3, 2] = W[3, 0] - 0.5 * W[3, 1]  # in the span of the first two
    return scale * W


def check_rank_deficient(backend, device, dtype):
    """Zero, repeated and dependent rows: orthonormal, equal to the reference, finite gradients."""
    W = rank_deficient_W().to(device, dtype).requires_grad_()
    with backend_context(backend):
        Q = ops.orthonormalize(W)
    assert_orthonormal(Q.detach(), tolerance("orth", dtype))
    assert_close(Q.detach(), reference.orthonormalize(W.detach().cpu()).to(device), tolerance("Q", dtype), "Q")
    # Replaced rows are exact coordinate axes (then orthonormalized): for W == 0 they are e0, e1, e2.
    assert torch.equal(Q[0].detach().cpu().double(), torch.eye(3, W.shape[-1], dtype=torch.float64))
    (grad_W,) = torch.autograd.grad(Q, W, torch.ones_like(Q))
    assert torch.isfinite(grad_W).all()
    assert (grad_W[0] == 0).all()  # nothing depends on an all-zero W


def check_zero_inputs(backend, device, dtype):
    Q = reference.orthonormalize(torch.randn(2, 3, 5, dtype=torch.float64)).to(device, dtype)
    with backend_context(backend):
        V, lam, res, Q_next = ops.ritz_step(Q, torch.zeros_like(Q))
        for kind in reference.LOSS_KINDS:
            for weights in reference.WEIGHT_KINDS:
                Vg = Q.clone().requires_grad_()
                Sg = torch.zeros(2, 3, device=device, dtype=dtype, requires_grad=True)
                loss = ops.alignment_loss(Vg, Sg, kind, weights)
                grads = torch.autograd.grad(loss.sum(), (Vg, Sg))
                assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)
    for t in (V, lam, res, Q_next):
        assert torch.isfinite(t).all()
    assert (lam == 0).all() and (res == 0).all()
    assert_orthonormal(V, tolerance("orth", dtype))
    assert_orthonormal(Q_next, tolerance("orth", dtype))


# Input scales the ops must be invariant to: float32 spans about 1e+-38, float64 about 1e+-308.
SCALES = {
    torch.float32: (1e-30, 1e-20, 1.0, 1e20, 1e30),
    torch.float64: (1e-300, 1e-150, 1e-20, 1.0, 1e20, 1e150, 1e300),
}


def check_orthonormalize_scale_invariant(backend, device, dtype):
    """orthonormalize(c W) == orthonormalize(W) and c * grad_W(c W) == grad_W(W) for c > 0, with
    the zero / dependent-row rule relative to each row's own scale.

    Before: float32 rows scaled beyond about 1e19 (squares overflow) or below 1e-20 (squares
    underflow) came back as coordinate axes (max error 1); float64 beyond about 1e154 likewise."""
    W = make_W(3, 4, 20, torch.float64, "cpu")
    expected = reference.orthonormalize(W)
    grad = torch.randn(W.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W_ref = W.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(reference.orthonormalize(W_ref), W_ref, grad)
    deficient = rank_deficient_W()
    expected_deficient = reference.orthonormalize(deficient)
    for c in SCALES[dtype]:
        Wc = (c * W).to(device, dtype).requires_grad_()
        with backend_context(backend):
            Q = ops.orthonormalize(Wc)
            (grad_W,) = torch.autograd.grad(Q, Wc, grad.to(device, dtype))
            Q_deficient = ops.orthonormalize((c * deficient).to(device, dtype))
        assert_close(Q.detach().double().cpu(), expected, tolerance("Q", dtype), f"Q at scale {c:g}")
        assert_close(c * grad_W.double().cpu(), expected_grad, tolerance("grad_W", dtype), f"c * grad_W at scale {c:g}")
        assert_close(
            Q_deficient.double().cpu(), expected_deficient, tolerance("Q", dtype), f"rank-deficient Q at scale {c:g}"
        )


def check_ritz_step_scale_invariant(backend, device, dtype):
    """ritz_step(Q, c MQ) = (V, c lam, res, Q_next) for c > 0: values scale, vectors and relative
    residuals do not.

    Before: res was inf for c >= 1e20 (float32; squared residual entries overflow) and 0 for
    c = 1e-30 (they underflow), and Q_next was coordinate axes (orthonormalize's squares)."""
    Q, MQ, V_prev = make_ritz_inputs(2, 3, 12, torch.float64, "cpu", with_prev=True)
    V0, lam0, res0, Q0 = reference.ritz_step(Q, MQ, V_prev)
    for c in SCALES[dtype]:
        with backend_context(backend):
            V, lam, res, Q_next = ops.ritz_step(
                Q.to(device, dtype), (c * MQ).to(device, dtype), V_prev.to(device, dtype)
            )
        assert_close(V.double().cpu(), V0, tolerance("V", dtype), f"V at scale {c:g}")
        assert_close(lam.double().cpu() / c, lam0, tolerance("lam", dtype), f"lam / c at scale {c:g}")
        assert_close(res.double().cpu(), res0, tolerance("res", dtype), f"res at scale {c:g}")
        assert_close(Q_next.double().cpu(), Q0, tolerance("Q_next", dtype), f"Q_next at scale {c:g}")


def check_alignment_loss_scale_invariant(backend, device, dtype):
    """alignment_loss(V, c S) == alignment_loss(V, S) and c * grad_S(c S) == grad_S(S) for c > 0,
    every kind and weighting (the loss reads S / max S per sample).

    Before: offdiag returned NaN at c = 1e15 and 0 at c = 1e-15 in float32 (fourth powers of S
    overflow and underflow), on every backend and in the reference; singular weights beyond 1e38."""
    V, S = unit_rows(3, 4, 9, torch.float64, "cpu")
    grad = torch.rand(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for kind in reference.LOSS_KINDS:
        for weights in reference.WEIGHT_KINDS:
            S_ref = S.clone().requires_grad_()
            V_ref = V.clone().requires_grad_()
            expected = reference.alignment_loss(V_ref, S_ref, kind, weights)
            exp_V, exp_S = torch.autograd.grad(expected, (V_ref, S_ref), grad, materialize_grads=True)
            for c in SCALES[dtype] + ((1e15, 1e-15, 1e36, 1e-36) if dtype == torch.float32 else ()):
                Vc = V.to(device, dtype).requires_grad_()
                Sc = (c * S).to(device, dtype).requires_grad_()
                with backend_context(backend):
                    loss = ops.alignment_loss(Vc, Sc, kind, weights)
                    grad_V, grad_S = torch.autograd.grad(loss, (Vc, Sc), grad.to(device, dtype), materialize_grads=True)
                what = f"{kind}/{weights} at scale {c:g}"
                assert_close(loss.detach().double().cpu(), expected.detach(), tolerance("loss", dtype), "loss " + what)
                assert_close(grad_V.double().cpu(), exp_V, tolerance("grad_V", dtype), "grad_V " + what)
                assert_close(c * grad_S.double().cpu(), exp_S, tolerance("grad_S", dtype), "c * grad_S " + what)


def check_orthonormalize_non_finite(backend, device, dtype):
    """A sample with a NaN or Inf entry gives an all-NaN Q (and a zero gradient); the others are
    unaffected.

    Before: the rows before the first non-finite row came back finite, as if the sample were fine."""
    W = make_W(4, 3, 8, torch.float64, "cpu")
    bad = W.clone()
    bad[1, 1, 2] = float("nan")
    bad[2, 0, 5] = float("inf")
    bad[3, 2, 0] = -float("inf")
    Wb = bad.to(device, dtype).requires_grad_()
    with backend_context(backend):
        Q = ops.orthonormalize(Wb)
        (grad_W,) = torch.autograd.grad(Q, Wb, torch.ones_like(Q))
    assert torch.isnan(Q[1:]).all(), "non-finite samples must give an all-NaN Q"
    clean = W[:1].to(device, dtype).requires_grad_()
    expected = reference.orthonormalize(clean)
    (expected_grad,) = torch.autograd.grad(expected, clean, torch.ones_like(expected))
    assert_close(Q[:1].detach(), expected.detach(), tolerance("Q", dtype), "Q of the finite sample")
    assert_close(grad_W[:1], expected_grad, tolerance("grad_W", dtype), "grad_W of the finite sample")
    assert (grad_W[1:] == 0).all(), "non-finite samples get a zero gradient"


def check_ritz_step_non_finite(backend, device, dtype, with_prev=False):
    """Samples whose Q or MQ hold NaN or Inf give NaN values, residuals, vectors and next basis (never
    a small, 'converged' residual, never an error); the other samples are unaffected.  A NaN in
    V_prev makes that vector take the sign rule without V_prev, on every backend.

    Before: reference and triton raised (torch.linalg.eigh fails on NaN); cpp returned NaN values
    with residual 0."""
    Q, MQ, V_prev = make_ritz_inputs(5, 3, 8, torch.float64, "cpu", with_prev=with_prev)
    Q_bad, MQ_bad = Q.clone(), MQ.clone()
    Q_bad[1, 1, 2] = float("nan")
    MQ_bad[2, 0, 4] = float("inf")
    MQ_bad[3, 2, 7] = float("nan")
    Q_bad[4, 0, 0] = -float("inf")
    if V_prev is not None:  # a NaN in V_prev: that vector takes the sign rule without V_prev
        V_prev = V_prev.clone()
        V_prev[0, 1] = float("nan")
    cast = lambda t: None if t is None else t.to(device, dtype)
    with backend_context(backend):
        out = ops.ritz_step(cast(Q_bad), cast(MQ_bad), cast(V_prev))
    expected = reference.ritz_step(Q[:1], MQ[:1], None if V_prev is None else V_prev[:1])
    for name, actual, ref in zip(("V", "lam", "res", "Q_next"), out, expected):
        assert torch.isnan(actual[1:]).all(), f"{name} of the non-finite samples must be NaN"
        assert_close(actual[:1].double().cpu(), ref, tolerance(name, dtype), f"{name} of the finite sample")


def check_alignment_loss_rejects_bad_inputs(backend, device):
    """Non-finite or negative S, and V with non-finite entries or rows off the unit sphere, raise a
    ValueError naming the argument; unit rows rounded to half precision are accepted.

    Before: a NaN in S was silently dropped (uniform weights), and V = 3 * (unit rows) gave a
    'loss in [0, 1]' of 3.8."""
    V, S = unit_rows(2, 3, 7, torch.float32, device)
    bad_S = {"NaN": float("nan"), "Inf": float("inf"), "negative": -0.5}
    with backend_context(backend):
        for what, value in bad_S.items():
            S_bad = S.clone()
            S_bad[1, 2] = value
            with pytest.raises(ValueError, match=r"^S must be finite and >= 0"):
                ops.alignment_loss(V, S_bad, "l1", "singular")
        for what, value in (("NaN", float("nan")), ("Inf", float("inf"))):
            V_bad = V.clone()
            V_bad[0, 1, 3] = value
            with pytest.raises(ValueError, match=r"^V must be finite"):
                ops.alignment_loss(V_bad, S, "offdiag", "uniform")
        for factor in (3.0, 0.99, 0.0):
            V_bad = V.clone()
            V_bad[1, 0] *= factor
            with pytest.raises(ValueError, match=r"^V must have unit-norm rows"):
                ops.alignment_loss(V_bad, S, "assigned", "uniform")
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            loss = ops.alignment_loss(V.to(dtype), S.to(dtype), "l1", "singular")
            assert torch.isfinite(loss).all()


def compiled_pipeline(W, MQ_scale, S):
    Q = ops.orthonormalize(W)
    V, lam, res, Q_next = ops.ritz_step(Q, MQ_scale * Q)
    loss = ops.alignment_loss(Q, S, "offdiag", "singular") + ops.alignment_loss(Q, S, "l1", "uniform")
    return loss.sum() + lam.sum() + res.sum() + Q_next.sum() + V.sum()


def check_compile(backend, device):
    torch._dynamo.reset()
    W = make_W(3, 4, 9, torch.float32, device).requires_grad_()
    S = torch.rand(3, 4, device=device)
    with backend_context(backend):
        eager = compiled_pipeline(W, 2.0, S)
        (eager_grad,) = torch.autograd.grad(eager, W)
        compiled = torch.compile(compiled_pipeline, fullgraph=True, backend="aot_eager")(W, 2.0, S)
        (compiled_grad,) = torch.autograd.grad(compiled, W)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_orthonormalize_forward(backend, device, shape, dtype):
    check_orthonormalize_forward(backend, device, shape, dtype)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
def test_orthonormalize_large(backend, device, shape):
    if backend == "cuda" and shape[1] > ops.MAX_CUDA_K:
        pytest.skip("k above the CUDA limit")
    check_orthonormalize_forward(backend, device, shape, torch.float32)
    check_orthonormalize_backward(backend, device, shape, torch.float64)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_orthonormalize_backward(backend, device, shape, dtype):
    check_orthonormalize_backward(backend, device, shape, dtype)


def test_reference_backward_formula_matches_autograd():
    W = make_W(3, 5, 8, torch.float64, "cpu").requires_grad_()
    Q = reference.orthonormalize(W)
    grad = torch.randn_like(Q)
    (expected,) = torch.autograd.grad(Q, W, grad)
    actual = reference.orthonormalize_backward(grad, Q.detach(), W.detach())
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_orthonormalize_matches_qr(backend, device, dtype):
    """Oracle independent of reference.py: Householder QR of W^T, signs fixed by diag(R) > 0."""
    W = make_W(4, 6, 50, dtype, device, seed=5)
    with backend_context(backend):
        Q = ops.orthonormalize(W)
    q, r = torch.linalg.qr(W.double().transpose(-1, -2))
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    expected = (q * signs[:, None, :]).transpose(-1, -2)
    assert_close(Q.double(), expected, tolerance("Q vs qr", dtype), "Q vs qr")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_rank_deficient_orthonormalize(backend, device, dtype):
    check_rank_deficient(backend, device, dtype)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_zero_inputs(backend, device, dtype):
    check_zero_inputs(backend, device, dtype)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("with_prev", [False, True], ids=["sign_max", "sign_prev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 6), (2, 4, 4), (3, 3, 37), (2, 8, 130), (1, 32, 40)], ids=str)
def test_ritz_step(backend, device, shape, dtype, with_prev):
    check_ritz_step(backend, device, shape, dtype, with_prev)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_ritz_step_flat_spectrum(backend, device):
    """Repeated Ritz values: vectors are not unique, but they must span the same subspace."""
    g = torch.Generator().manual_seed(7)
    Q = reference.orthonormalize(torch.randn(3, 4, 12, generator=g, dtype=torch.float64)).to(device)
    MQ = 2.5 * Q  # M acts as 2.5 I on span(Q)
    with backend_context(backend):
        V, lam, res, Q_next = ops.ritz_step(Q, MQ)
    torch.testing.assert_close(lam, torch.full_like(lam, 2.5), rtol=0, atol=1e-12)
    assert res.abs().max().item() <= 1e-12
    assert_orthonormal(V, tolerance("orth", torch.float64))
    P = Q.transpose(-1, -2) @ Q  # projector on span(Q)
    torch.testing.assert_close(V @ P, V, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("weights", reference.WEIGHT_KINDS)
@pytest.mark.parametrize("kind", reference.LOSS_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 6), (2, 4, 4), (3, 3, 37), (2, 8, 130), (1, 32, 40)], ids=str)
def test_alignment_loss(backend, device, shape, dtype, kind, weights):
    check_alignment_loss(backend, device, shape, dtype, kind, weights)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_gradcheck(backend, device):
    W = make_W(2, 3, 7, torch.float64, device).requires_grad_()
    V, S = unit_rows(2, 3, 7, torch.float64, device)
    V.requires_grad_(), S.requires_grad_()
    with backend_context(backend):
        assert torch.autograd.gradcheck(ops.orthonormalize, (W,))
        for kind in reference.LOSS_KINDS:
            for weights in reference.WEIGHT_KINDS:
                assert torch.autograd.gradcheck(lambda v, s: ops.alignment_loss(v, s, kind, weights), (V, S))


ALL_BACKEND_DEVICES = [pytest.param("reference", "cpu", id="reference")] + BACKEND_DEVICES


@pytest.mark.parametrize("backend, device", ALL_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_orthonormalize_scale_invariant(backend, device, dtype):
    check_orthonormalize_scale_invariant(backend, device, dtype)


@pytest.mark.parametrize("backend, device", ALL_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_ritz_step_scale_invariant(backend, device, dtype):
    check_ritz_step_scale_invariant(backend, device, dtype)


@pytest.mark.parametrize("backend, device", [pytest.param("reference", "cpu", id="reference")] + BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_alignment_loss_scale_invariant(backend, device, dtype):
    check_alignment_loss_scale_invariant(backend, device, dtype)


@pytest.mark.parametrize("backend, device", ALL_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_orthonormalize_non_finite(backend, device, dtype):
    check_orthonormalize_non_finite(backend, device, dtype)


@pytest.mark.parametrize("backend, device", ALL_BACKEND_DEVICES)
@pytest.mark.parametrize("with_prev", [False, True], ids=["sign_max", "sign_prev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_ritz_step_non_finite(backend, device, dtype, with_prev):
    check_ritz_step_non_finite(backend, device, dtype, with_prev)


@pytest.mark.parametrize("backend, device", ALL_BACKEND_DEVICES)
def test_alignment_loss_rejects_bad_inputs(backend, device):
    check_alignment_loss_rejects_bad_inputs(backend, device)


@pytest.mark.parametrize("backend", ["auto", "reference", pytest.param("cpp", marks=needs_cpp)])
def test_meta_tensors_are_refused_by_name(backend):
    """Every op reads its inputs' values, so a meta tensor is refused naming the argument
    (previous main: "Tensor.item() cannot be called on meta tensors" from inside the checks, or
    "Cannot copy out of meta tensor")."""
    meta = torch.empty(2, 3, 5, device="meta")
    V, S = unit_rows(2, 3, 5, torch.float32, "cpu")
    with ops.use_backend(backend):
        for call, name in [
            (lambda: ops.orthonormalize(meta), "W"),
            (lambda: ops.ritz_step(meta, meta), "Q"),
            (lambda: ops.ritz_step(V, meta), "MQ"),
            (lambda: ops.ritz_step(V, V, meta), "V_prev"),
            (lambda: ops.alignment_loss(meta, S), "V"),
            (lambda: ops.alignment_loss(V, torch.empty(2, 3, device="meta")), "S"),
        ]:
            with pytest.raises(ValueError, match=f"^{name} is on the meta device"):
                call()


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    lib = torch.ops.spectral_ops
    W = make_W(2, 3, 7, torch.float64, device)
    Q = reference.orthonormalize(W.cpu()).to(device)
    V, S = unit_rows(2, 3, 7, torch.float64, device)
    cases = [
        (lib.orthonormalize.default, (W.clone().requires_grad_(),)),
        (lib.orthonormalize_backward.default, (torch.randn_like(W), Q, W)),
        (lib.ritz_step.default, (Q, 3.0 * Q + 0.1 * W, None)),
        (lib.ritz_step.default, (Q, 3.0 * Q + 0.1 * W, W)),
    ]
    for kind in reference.LOSS_KINDS:
        _, saved = lib.alignment_loss_forward(V, S, kind, "singular")
        cases.append((lib.alignment_loss_forward.default, (V, S, kind, "singular")))
        cases.append(
            (
                lib.alignment_loss_backward.default,
                (torch.rand(2, dtype=torch.float64, device=device), V, S, saved, kind, "singular"),
            )
        )
    for kind in reference.LOSS_KINDS:
        cases.append(
            (lib.alignment_loss.default, (V.clone().requires_grad_(), S.clone().requires_grad_(), kind, "singular"))
        )
    with backend_context(backend):
        for op, args in cases:
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_torch_compile_fullgraph(backend, device):
    check_compile(backend, device)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_bad_inputs(backend, device):
    V, S = unit_rows(2, 3, 5, torch.float32, device)
    with backend_context(backend):
        with pytest.raises(ValueError, match="W must be 3-D"):
            ops.orthonormalize(V[0])
        with pytest.raises(ValueError, match="W must have 1 <= k <= d"):
            ops.orthonormalize(torch.randn(2, 6, 5, device=device))
        with pytest.raises(ValueError, match="W must have 1 <= k <= d"):
            ops.orthonormalize(torch.randn(2, 0, 5, device=device))
        with pytest.raises(TypeError, match="W must be a torch.Tensor"):
            ops.orthonormalize([[1.0]])
        with pytest.raises(TypeError, match="W must be a floating-point"):
            ops.orthonormalize(torch.ones(2, 3, 5, dtype=torch.int64, device=device))
        with pytest.raises(ValueError, match="MQ must have the shape of Q"):
            ops.ritz_step(V, V[:, :2])
        with pytest.raises(ValueError, match="V_prev must have the shape of Q"):
            ops.ritz_step(V, V, V[:1])
        with pytest.raises(ValueError, match="kind must be one of"):
            ops.alignment_loss(V, S, "l2")
        with pytest.raises(ValueError, match="weights must be one of"):
            ops.alignment_loss(V, S, "l1", "softmax")
        with pytest.raises(ValueError, match=r"S must be \[B, k\]"):
            ops.alignment_loss(V, S[:, :2])


@needs_cpp
def test_compiled_ops_validate_their_own_inputs():
    """Direct torch.ops calls (no Python wrapper) raise ValueError naming the argument too."""
    lib = torch.ops.spectral_ops
    V, S = unit_rows(2, 3, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="W must be 3-D"):
        lib.orthonormalize(V[0])
    with pytest.raises(ValueError, match="W must have 1 <= k <= d"):
        lib.orthonormalize(torch.randn(1, 6, 5))
    with pytest.raises(ValueError, match="kind must be one of"):
        lib.alignment_loss(V, S, "l2", "uniform")
    with pytest.raises(ValueError, match="weights must be one of"):
        lib.alignment_loss(V, S, "l1", "softmax")
    with pytest.raises(ValueError, match="MQ must have the shape of Q"):
        lib.ritz_step(V, V[:, :2], None)
    with pytest.raises(ValueError, match="kind must be one of"):
        lib.alignment_loss_forward(V, S, "l2", "uniform")
    with pytest.raises(ValueError, match=r"S must be \[B, k\]"):
        lib.alignment_loss_forward(V, S[:, :2], "l1", "uniform")
    _, saved = lib.alignment_loss_forward(V, S, "offdiag", "uniform")
    assert saved.shape == (2, ops._native.saved_width("offdiag", 3, 5)) == (2, 2 + 9 + 5)
    with pytest.raises(ValueError, match=r"saved must be \[B, 16\]"):
        lib.alignment_loss_backward(torch.ones(2), V, S, saved[:, :3], "offdiag", "uniform")
    with pytest.raises(ValueError, match=r"saved must be \[B, 3\]"):  # stats of another kind
        lib.alignment_loss_backward(torch.ones(2), V, S, saved, "l1", "uniform")
    with pytest.raises(ValueError, match=r"grad must be \[B\]"):
        lib.alignment_loss_backward(torch.ones(3), V, S, saved, "offdiag", "uniform")


@needs_cpp
@pytest.mark.parametrize("kind", reference.LOSS_KINDS)
def test_alignment_loss_forward_saves_what_the_backward_needs(kind):
    """alignment_loss_forward's loss equals alignment_loss's; its statistics are the documented
    per-sample quantities, computed independently here from V and S / max S (the loss is
    scale-free in S and every kernel reads it in those units)."""
    V, S = unit_rows(4, 3, 9, torch.float64, "cpu", seed=3)
    lib = torch.ops.spectral_ops
    loss, saved = lib.alignment_loss_forward(V, S, kind, "singular")
    torch.testing.assert_close(loss, lib.alignment_loss(V, S, kind, "singular"), rtol=0, atol=0)
    if kind == "offdiag":
        s2 = (S / S.amax(-1, keepdim=True)) ** 2
        gram = V @ V.transpose(-1, -2)
        diag = (s2[:, :, None] * V * V).sum(1)
        expected = torch.cat(
            [
                (s2[:, :, None] * s2[:, None, :] * gram * gram).sum((-1, -2))[:, None],
                (diag * diag).sum(-1)[:, None],
                gram.flatten(1),
                diag,
            ],
            dim=1,
        )
    elif kind == "l1":
        expected = (V.abs().sum(-1) - 1.0) / (9**0.5 - 1.0)
    else:
        expected = 1.0 - torch.diagonal(V, dim1=-2, dim2=-1) ** 2
    torch.testing.assert_close(saved, expected, rtol=0, atol=1e-13)


def test_backend_selection():
    assert "reference" in ops.available_backends()
    # An unknown name: ValueError on entering the context, naming the name and the valid ones, and
    # the previous choice kept.
    with pytest.raises(
        ValueError,
        match=r"^backend must be one of \('auto', 'cpp', 'cuda', 'triton', "
        r"'reference'\), got 'numba'$",
    ):
        with ops.use_backend("numba"):
            pytest.fail("use_backend('numba') ran its block")
    assert ops._active() == "auto"
    W = make_W(2, 3, 5, torch.float32, "cpu")
    if not ops._native.has_cuda_kernels():
        with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="FORCE_CUDA=1"):
            ops.orthonormalize(W)
    from spectral_ops.ops.backends import triton as triton_kernels

    if not triton_kernels.INTERPRET:
        with ops.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|pip install triton"):
            ops.orthonormalize(W)
    if HAS_CPP:
        # An explicit backend is the one that runs: the compiled kernel's result, bit for bit, which
        # here differs from reference.py's in the last float32 bit.
        with ops.use_backend("cpp"):
            assert ops._active() == "cpp" and ops._resolve(torch.device("cpu"), 3) == "cpp"
            Q = ops.orthonormalize(W)
        assert torch.equal(Q, torch.ops.spectral_ops.orthonormalize(W))
        assert not torch.equal(Q, reference.orthonormalize(W))
        assert ops._active() == "auto"
        assert ops._resolve(torch.device("cpu"), 3) == "cpp"  # auto: cpp for CPU tensors
    if HAS_GPU and "cuda" in ops.available_backends("cuda"):
        with ops.use_backend("cuda"):
            assert ops._resolve(torch.device("cuda"), 3) == "cuda"
            Q = ops.orthonormalize(W.cuda())
        assert torch.equal(Q, torch.ops.spectral_ops.orthonormalize(W.cuda()))
    with ops.use_backend("reference"):
        assert ops._resolve(torch.device("cpu"), 3) == "reference"
        torch.testing.assert_close(ops.orthonormalize(W), reference.orthonormalize(W))
    assert ops._active() == "auto"


@needs_cpp
def test_cpu_isa_selection():
    assert ops.cpu_isa() in ops.cpu_isas()
    assert "baseline" in ops.cpu_isas()
    with pytest.raises(ValueError, match=r"^cpu isa must be one of .*, got 'avx512'$"):
        with ops.use_cpu_isa("avx512"):
            pytest.fail("use_cpu_isa('avx512') ran its block")
    with pytest.raises(ValueError, match="cpu isa must be 'baseline' or 'avx2'"):
        ops._native._C.set_cpu_isa("sse9")
    before = ops.cpu_isa()
    with ops.use_cpu_isa("baseline"):
        assert ops.cpu_isa() == "baseline"
    assert ops.cpu_isa() == before
    with ops.use_backend("cpp", cpu_isa="baseline"):
        assert ops.cpu_isa() == "baseline" and ops._active() == "cpp"
    assert ops.cpu_isa() == before and ops._active() == "auto"
    if "avx2" not in ops.cpu_isas():
        with pytest.raises(ValueError, match="not available"):
            with ops.use_cpu_isa("avx2"):
                pass


@needs_cpp
@pytest.mark.skipif(not (HAS_CPP and "avx2" in ops.cpu_isas()), reason="this CPU has no AVX2 + FMA")
def test_avx2_copy_is_a_different_build():
    """The avx2 copy really runs other code: with FMA contraction its float32 rounding differs
    from the baseline copy's (both match the reference; see the cpp and cpp-baseline tests)."""
    W = torch.randn(64, 8, 128, generator=torch.Generator().manual_seed(0))
    with ops.use_backend("cpp", cpu_isa="baseline"):
        baseline = ops.orthonormalize(W)
    with ops.use_backend("cpp", cpu_isa="avx2"):
        avx2 = ops.orthonormalize(W)
    assert not torch.equal(avx2, baseline)
    torch.testing.assert_close(avx2, baseline, rtol=0, atol=2.4e-7)  # measured 6.0e-8; 4x


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_cuda_rejects_large_k():
    W = torch.randn(2, 33, 40, device="cuda")
    if "cuda" in ops.available_backends():
        with ops.use_backend("cuda"), pytest.raises(ValueError, match="k <= 32"):
            ops.orthonormalize(W)
        with pytest.raises(ValueError, match="k <= 32"):
            torch.ops.spectral_ops.orthonormalize(W)
    ops.orthonormalize(W)  # auto falls back to triton or reference
