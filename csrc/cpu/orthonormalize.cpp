// orthonormalize / orthonormalize_backward on the CPU (maths: common/gram_schmidt.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/gram_schmidt.h"
#include "cpu/cpu_loop.h"

namespace spectral_ops {
namespace {

at::Tensor orthonormalize_cpu(const at::Tensor& W) {
  const RowsShape s = check_rows(W, "W");
  const at::Tensor Wc = as_compute(W, compute_dtype(W.scalar_type()));
  at::Tensor Q = at::empty_like(Wc);
  AT_DISPATCH_FLOATING_TYPES(Wc.scalar_type(), "orthonormalize_cpu", [&] {
    const scalar_t* w = Wc.const_data_ptr<scalar_t>();
    scalar_t* q = Q.data_ptr<scalar_t>();
    const int64_t k = s.k, d = s.d;
    for_each_sample<scalar_t>(s.B, 4 * k * k * d, k, [&](const SerialContext& ctx, int64_t b, scalar_t* coef) {
      orthonormalize_rows(ctx, w + b * k * d, q + b * k * d, (int)k, (int)d, coef);
    });
  });
  return Q.to(W.scalar_type());
}

at::Tensor orthonormalize_backward_cpu(const at::Tensor& grad_Q, const at::Tensor& Q, const at::Tensor& W) {
  const RowsShape s = check_rows(W, "W");
  check_same_shape(Q, "Q", W, "W");
  check_same_shape(grad_Q, "grad_Q", W, "W");
  const at::ScalarType ct = compute_dtype(W.scalar_type());
  const at::Tensor gc = as_compute(grad_Q, ct), qc = as_compute(Q, ct), wc = as_compute(W, ct);
  at::Tensor grad_W = at::empty_like(wc);
  AT_DISPATCH_FLOATING_TYPES(ct, "orthonormalize_backward_cpu", [&] {
    const int64_t k = s.k, d = s.d, n = k * d;
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* q = qc.const_data_ptr<scalar_t>();
    const scalar_t* w = wc.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_W.data_ptr<scalar_t>();
    // scratch: L and M, k * k each
    for_each_sample<scalar_t>(s.B, 4 * k * k * d, 2 * k * k,
                              [&](const SerialContext& ctx, int64_t b, scalar_t* scratch) {
                                orthonormalize_backward_rows(ctx, g + b * n, q + b * n, w + b * n, gw + b * n, (int)k,
                                                             (int)d, scratch, scratch + k * k);
                              });
  });
  return grad_W.to(grad_Q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CPU, m) {
  m.impl("orthonormalize", &orthonormalize_cpu);
  m.impl("orthonormalize_backward", &orthonormalize_backward_cpu);
}

}  // namespace spectral_ops
