// ritz_step on the CPU (maths: common/ritz.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/ritz.h"
#include "cpu/cpu_loop.h"

namespace spectral_ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ritz_step_cpu(const at::Tensor& Q, const at::Tensor& MQ,
                                                                         const std::optional<at::Tensor>& V_prev) {
  const RowsShape s = check_rows(Q, "Q");
  check_same_shape(MQ, "MQ", Q, "Q");
  if (V_prev.has_value()) check_same_shape(*V_prev, "V_prev", Q, "Q");
  const at::ScalarType ct = compute_dtype(Q.scalar_type());
  const at::Tensor qc = as_compute(Q, ct), mqc = as_compute(MQ, ct);
  const at::Tensor pc = V_prev.has_value() ? as_compute(*V_prev, ct) : at::Tensor();
  at::Tensor V = at::empty_like(qc), Q_next = at::empty_like(qc);
  at::Tensor lam = at::empty({s.B, s.k}, qc.options()), res = at::empty({s.B, s.k}, qc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "ritz_step_cpu", [&] {
    const int64_t k = s.k, d = s.d, n = k * d;
    const scalar_t* q = qc.const_data_ptr<scalar_t>();
    const scalar_t* mq = mqc.const_data_ptr<scalar_t>();
    const scalar_t* prev = pc.defined() ? pc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* v = V.data_ptr<scalar_t>();
    scalar_t* qn = Q_next.data_ptr<scalar_t>();
    scalar_t* lp = lam.data_ptr<scalar_t>();
    scalar_t* rp = res.data_ptr<scalar_t>();
    // scratch: H and U (k * k each), eig_work (2k + 1), coef (k), and order (k ints, each in the
    // space of one scalar_t)
    static_assert(sizeof(int) <= sizeof(scalar_t) && alignof(int) <= alignof(scalar_t));
    for_each_sample<scalar_t>(s.B, 8 * k * k * d, 2 * k * k + 4 * k + 1,
                              [&](const SerialContext& ctx, int64_t b, scalar_t* buffer) {
                                scalar_t* eig_work = buffer + 2 * k * k;
                                scalar_t* coef = eig_work + 2 * k + 1;
                                int* order = reinterpret_cast<int*>(coef + k);
                                RitzScratch<scalar_t> scratch{buffer, buffer + k * k, order, eig_work, coef};
                                ritz_step_sample(ctx, q + b * n, mq + b * n, prev ? prev + b * n : nullptr, v + b * n,
                                                 lp + b * k, rp + b * k, qn + b * n, (int)k, (int)d, scratch);
                              });
  });
  const at::ScalarType out = Q.scalar_type();
  return {V.to(out), lam.to(out), res.to(out), Q_next.to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CPU, m) { m.impl("ritz_step", &ritz_step_cpu); }

}  // namespace spectral_ops
