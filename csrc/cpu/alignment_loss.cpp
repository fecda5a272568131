// alignment_loss, alignment_loss_forward and alignment_loss_backward on the CPU
// (maths: common/alignment.h).
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

// loss [B] and, if with_saved, the statistics the backward needs ([B, saved_width]).
std::tuple<at::Tensor, at::Tensor> alignment_loss_impl(const at::Tensor& V, const at::Tensor& S,
                                                       c10::string_view kind, c10::string_view weights,
                                                       bool with_saved) {
  const RowsShape s = check_rows(V, "V");
  check_values(S, "S", s, V);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor vc = as_compute(V, ct), sc = as_compute(S, ct);
  const int64_t width = saved_width(kind_code, (int)s.k, (int)s.d);
  at::Tensor loss = at::empty({s.B}, vc.options());
  at::Tensor saved = with_saved ? at::empty({s.B, width}, vc.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_cpu", [&] {
    const int64_t k = s.k, d = s.d;
    const scalar_t* v = vc.const_data_ptr<scalar_t>();
    const scalar_t* sv = sc.const_data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    scalar_t* st = with_saved ? saved.data_ptr<scalar_t>() : nullptr;
    for_each_sample<scalar_t>(s.B, 2 * k * k * d, 0, [&](const SerialContext& ctx, int64_t b, scalar_t*) {
      out[b] = alignment_loss_sample(ctx, v + b * k * d, sv + b * k, (int)k, (int)d, kind_code, weight_code,
                                     st ? st + b * width : nullptr);
    });
  });
  return {loss.to(V.scalar_type()), saved};
}

at::Tensor alignment_loss_cpu(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                              c10::string_view weights) {
  return std::get<0>(alignment_loss_impl(V, S, kind, weights, /*with_saved=*/false));
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_forward_cpu(const at::Tensor& V, const at::Tensor& S,
                                                              c10::string_view kind, c10::string_view weights) {
  return alignment_loss_impl(V, S, kind, weights, /*with_saved=*/true);
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& V,
                                                               const at::Tensor& S, const at::Tensor& saved,
                                                               c10::string_view kind, c10::string_view weights) {
  const RowsShape s = check_rows(V, "V");
  check_values(S, "S", s, V);
  check_grad(grad, s);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const int64_t width = saved_width(kind_code, (int)s.k, (int)s.d);
  check_saved(saved, s, width, V);
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor gc = as_compute(grad, ct), vc = as_compute(V, ct), sc = as_compute(S, ct);
  const at::Tensor stc = as_compute(saved, ct);
  at::Tensor grad_V = at::empty_like(vc), grad_S = at::empty_like(sc);
  AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_backward_cpu", [&] {
    const int64_t k = s.k, d = s.d;
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* v = vc.const_data_ptr<scalar_t>();
    const scalar_t* sv = sc.const_data_ptr<scalar_t>();
    const scalar_t* st = stc.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_V.data_ptr<scalar_t>();
    scalar_t* gs = grad_S.data_ptr<scalar_t>();
    for_each_sample<scalar_t>(s.B, 2 * k * k * d, k, [&](const SerialContext& ctx, int64_t b, scalar_t* mix) {
      alignment_loss_backward_sample(ctx, g[b], v + b * k * d, sv + b * k, st + b * width, gv + b * k * d,
                                     gs + b * k, (int)k, (int)d, kind_code, weight_code, mix);
    });
  });
  return {grad_V.to(V.scalar_type()), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CPU, m) {
  m.impl("alignment_loss", &alignment_loss_cpu);
  m.impl("alignment_loss_forward", &alignment_loss_forward_cpu);
  m.impl("alignment_loss_backward", &alignment_loss_backward_cpu);
}

}  // namespace spectral_ops
