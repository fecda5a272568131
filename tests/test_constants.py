"""The names and numbers Python and the kernels share agree with their single definitions.

- the constants of spectral_ops/ops/constants.def: Python parses the file, C++ includes it; the
  compiled extension reports what its kernels see (`_C.constants()`);
- the alignment_loss kinds and weightings: defined in common.LOSS_KINDS / WEIGHT_KINDS, their
  codes are their positions, in C++ (csrc/common/checks.h, alignment.h) and in the Triton kernels;
- the backend table of spectral_ops.ops: every backend provides every public op.
"""

from __future__ import annotations

import ast
import re

import pytest
import torch

from spectral_ops import ops
from spectral_ops.ops import _native, common, constants, reference

needs_cpp = pytest.mark.skipif(not _native.LOADED, reason="spectral_ops._C is not built")


def _listed_kinds(message: str) -> tuple[str, ...]:
    """The tuple in a "... must be one of ('a', 'b'), got 'x'" error message."""
    match = re.search(r"must be one of (\(.*?\)), got", message)
    assert match is not None, message
    return ast.literal_eval(match.group(1))


def _unit_rows(B=2, k=3, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    V = torch.randn(B, k, d, dtype=dtype, generator=g)
    V = V / V.norm(dim=-1, keepdim=True)
    S = torch.rand(B, k, dtype=dtype, generator=g) + 0.1
    return V, S


def test_constants_def_is_parsed():
    assert set(constants.VALUES) == {"MAX_CUDA_K", "RANK_TOLERANCE_FLOAT32", "RANK_TOLERANCE_FLOAT64"}
    assert isinstance(constants.MAX_CUDA_K, int) and ops.MAX_CUDA_K == constants.VALUES["MAX_CUDA_K"]
    assert common.rank_tolerance(torch.float64) == constants.VALUES["RANK_TOLERANCE_FLOAT64"]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert common.rank_tolerance(dtype) == constants.VALUES["RANK_TOLERANCE_FLOAT32"]


def test_constants_parser_refuses_what_it_cannot_read():
    assert constants.parse("// note\n\nSPECTRAL_CONSTANT(A, 3)  // three\nSPECTRAL_CONSTANT(B_2, -1.5e-3)\n") == {
        "A": 3,
        "B_2": -1.5e-3,
    }
    for bad in ("SPECTRAL_CONSTANT(A 3)", "#define A 3", "SPECTRAL_CONSTANT(A, 1)\nSPECTRAL_CONSTANT(A, 2)"):
        with pytest.raises(ValueError, match="constants.def:"):
            constants.parse(bad)


@needs_cpp
def test_cpp_sees_the_python_constants():
    seen = _native._C.constants()
    assert set(seen) == set(constants.VALUES)
    assert seen["MAX_CUDA_K"] == constants.MAX_CUDA_K
    assert seen["RANK_TOLERANCE_FLOAT64"] == constants.RANK_TOLERANCE_FLOAT64
    # rank_tolerance<float>() is the float32 nearest the value, as the Triton kernels receive it.
    as_float32 = torch.tensor(constants.RANK_TOLERANCE_FLOAT32, dtype=torch.float32).item()
    assert seen["RANK_TOLERANCE_FLOAT32"] == as_float32


@needs_cpp
@pytest.mark.parametrize("weights", common.WEIGHT_KINDS)
@pytest.mark.parametrize("kind", common.LOSS_KINDS)
def test_cpp_accepts_every_kind_and_matches_the_reference(kind, weights):
    V, S = _unit_rows()
    got = torch.ops.spectral_ops.alignment_loss(V, S, kind, weights)
    torch.testing.assert_close(got, reference.alignment_loss(V, S, kind, weights), rtol=0, atol=1e-12)


@needs_cpp
def test_cpp_refuses_unknown_kinds_and_lists_the_python_ones():
    V, S = _unit_rows()
    with pytest.raises(ValueError, match="kind must be one of") as error:
        torch.ops.spectral_ops.alignment_loss(V, S, "no-such-kind", "uniform")
    assert _listed_kinds(str(error.value)) == common.LOSS_KINDS
    with pytest.raises(ValueError, match="weights must be one of") as error:
        torch.ops.spectral_ops.alignment_loss(V, S, "l1", "no-such-weights")
    assert _listed_kinds(str(error.value)) == common.WEIGHT_KINDS


@needs_cpp
def test_cpp_codes_are_the_python_positions():
    assert [_native._C.loss_kind_code(kind) for kind in common.LOSS_KINDS] == list(range(len(common.LOSS_KINDS)))
    assert [_native._C.weight_kind_code(w) for w in common.WEIGHT_KINDS] == list(range(len(common.WEIGHT_KINDS)))
    with pytest.raises(ValueError, match="kind must be one of"):
        _native._C.loss_kind_code("no-such-kind")
    with pytest.raises(ValueError, match="weights must be one of"):
        _native._C.weight_kind_code("no-such-weights")


def test_triton_codes_are_the_python_positions():
    pytest.importorskip("triton")
    from spectral_ops.ops.backends.triton import kernels

    assert kernels.LOSS_CODES == {kind: code for code, kind in enumerate(common.LOSS_KINDS)}
    assert kernels.WEIGHT_CODES == {w: code for code, w in enumerate(common.WEIGHT_KINDS)}
    if _native.LOADED:
        assert all(_native._C.loss_kind_code(kind) == code for kind, code in kernels.LOSS_CODES.items())
        assert all(_native._C.weight_kind_code(w) == code for w, code in kernels.WEIGHT_CODES.items())


def test_every_backend_in_the_table_provides_every_op():
    assert ops.BACKENDS == ("auto",) + tuple(ops._BACKENDS)
    for name, backend in ops._BACKENDS.items():
        if name == "triton" and not ops._triton_module().AVAILABLE:
            continue
        if name in ("cpp", "cuda") and not _native.LOADED:
            continue
        implementation = backend.implementation()
        missing = [op for op in ops.OPS if not callable(getattr(implementation, op, None))]
        assert not missing, f"backend {name!r} lacks {missing}"
    assert ops._BACKENDS["cuda"].max_k == constants.MAX_CUDA_K


def test_triton_fake_kernels_are_the_native_ones():
    pytest.importorskip("triton")
    from spectral_ops.ops.backends import triton as triton_backend

    if not triton_backend.AVAILABLE:
        pytest.skip(triton_backend.UNAVAILABLE_REASON)
    from spectral_ops.ops.backends.triton import ops as triton_ops

    for name in ("orthonormalize", "orthonormalize_backward", "ritz_step", "alignment_loss", "alignment_loss_backward"):
        fake = _native.FAKE_KERNELS[name]
        # CustomOpDef keeps its fake kernel in _abstract_fn (private: skipped if a torch renames it).
        assert getattr(getattr(triton_ops, f"_{name}"), "_abstract_fn", fake) is fake, name
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    fake_V, fake_S = (mode.from_tensor(t) for t in _unit_rows())
    with mode:
        loss = torch.ops.spectral_ops_triton.alignment_loss(fake_V, fake_S, "offdiag", "singular")
        Q = torch.ops.spectral_ops_triton.ritz_step(fake_V, fake_V, None)
    assert loss.shape == (2,) and [tuple(t.shape) for t in Q] == [(2, 3, 5), (2, 3), (2, 3), (2, 3, 5)]
