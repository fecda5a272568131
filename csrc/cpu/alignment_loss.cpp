// alignment_loss / alignment_loss_backward on the CPU (maths: common/alignment.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common/alignment.h"
#include "common/checks.h"
#include "cpu/cpu_loop.h"

namespace spectral_ops {
namespace {

at::Tensor alignment_loss_cpu(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                              c10::string_view weights) {
  const RowsShape s = check_rows(V, "V");
  check_values(S, "S", s, V);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor vc = as_compute(V, ct), sc = as_compute(S, ct);
  at::Tensor loss = at::empty({s.B}, vc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_cpu", [&] {
    const int64_t k = s.k, d = s.d;
    const scalar_t* v = vc.const_data_ptr<scalar_t>();
    const scalar_t* sv = sc.const_data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    for_each_sample<scalar_t>(s.B, 2 * k * k * d, 0, [&](const SerialContext& ctx, int64_t b, scalar_t*) {
      out[b] = alignment_loss_sample(ctx, v + b * k * d, sv + b * k, (int)k, (int)d, kind_code, weight_code);
    });
  });
  return loss.to(V.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& V,
                                                               const at::Tensor& S, c10::string_view kind,
                                                               c10::string_view weights) {
  const RowsShape s = check_rows(V, "V");
  check_values(S, "S", s, V);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == s.B, "grad must be [B] = [", s.B, "], got shape ",
                    grad.sizes());
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor gc = as_compute(grad, ct), vc = as_compute(V, ct), sc = as_compute(S, ct);
  at::Tensor grad_V = at::empty_like(vc), grad_S = at::empty_like(sc);
  AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_backward_cpu", [&] {
    const int64_t k = s.k, d = s.d;
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* v = vc.const_data_ptr<scalar_t>();
    const scalar_t* sv = sc.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_V.data_ptr<scalar_t>();
    scalar_t* gs = grad_S.data_ptr<scalar_t>();
    // scratch: gram (k * k), per_vector (k), work (d, offdiag only)
    const int64_t work_size = kind_code == kLossOffdiag ? d : 0;
    for_each_sample<scalar_t>(s.B, 4 * k * k * d, k * k + k + work_size,
                              [&](const SerialContext& ctx, int64_t b, scalar_t* scratch) {
      scalar_t* gram = scratch;
      scalar_t* per_vector = gram + k * k;
      scalar_t* work = per_vector + k;
      alignment_loss_backward_sample(ctx, g[b], v + b * k * d, sv + b * k, gv + b * k * d, gs + b * k, (int)k,
                                     (int)d, kind_code, weight_code, gram, per_vector, work);
    });
  });
  return {grad_V.to(V.scalar_type()), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CPU, m) {
  m.impl("alignment_loss", &alignment_loss_cpu);
  m.impl("alignment_loss_backward", &alignment_loss_backward_cpu);
}

}  // namespace spectral_ops
