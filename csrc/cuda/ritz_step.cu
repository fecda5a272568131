// ritz_step on CUDA: one thread block per sample (maths: common/ritz.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/ritz.h"
#include "cuda/block_context.cuh"

namespace spectral_ops {
namespace {

// The k x k scratch of one block, after the batch buffer, in dynamic shared memory.
template <typename T>
__host__ __device__ RitzScratch<T> carve_ritz_scratch(SharedCarver& carver, int k, T* coef) {
  T* H = carver.take<T>((long)k * k);
  T* U = carver.take<T>((long)k * k);
  T* eig_work = carver.take<T>(2 * k + 1);
  int* order = carver.take<int>(k);
  return RitzScratch<T>{H, U, order, eig_work, coef};
}

template <typename T>
__global__ void ritz_step_kernel(const T* Q, const T* MQ, const T* V_prev, T* V, T* lam, T* res, T* Q_next, int k,
                                 int d) {
  SharedCarver carver{dynamic_shared()};
  SPECTRAL_BLOCK_CONTEXT(T, carver, k);
  T coef[kMaxCudaK];  // per-thread: the CGS2 coefficients and the Ritz vectors' signs
  const RitzScratch<T> scratch = carve_ritz_scratch<T>(carver, k, coef);
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  ritz_step_sample(ctx, Q + offset, MQ + offset, V_prev ? V_prev + offset : nullptr, V + offset,
                   lam + (int64_t)blockIdx.x * k, res + (int64_t)blockIdx.x * k, Q_next + offset, k, d, scratch);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ritz_step_cuda(const at::Tensor& Q, const at::Tensor& MQ,
                                                                          const std::optional<at::Tensor>& V_prev) {
  const RowsShape s = check_cuda_rows(Q, "Q");
  check_same_shape(MQ, "MQ", Q, "Q");
  if (V_prev.has_value()) check_same_shape(*V_prev, "V_prev", Q, "Q");
  const c10::cuda::CUDAGuard guard(Q.device());
  const at::ScalarType ct = compute_dtype(Q.scalar_type());
  const at::Tensor qc = as_compute(Q, ct), mqc = as_compute(MQ, ct);
  const at::Tensor pc = V_prev.has_value() ? as_compute(*V_prev, ct) : at::Tensor();
  at::Tensor V = at::empty_like(qc), Q_next = at::empty_like(qc);
  at::Tensor lam = at::empty({s.B, s.k}, qc.options()), res = at::empty({s.B, s.k}, qc.options());
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "ritz_step_cuda", [&] {
      const int threads = threads_for(s.d);
      SharedCarver carver{nullptr};
      take_batch_buffer<scalar_t>(carver, (int)s.k, threads);
      carve_ritz_scratch<scalar_t>(carver, (int)s.k, nullptr);
      const size_t shared_bytes = checked_shared_bytes(carver);
      ritz_step_kernel<scalar_t><<<s.B, threads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
          qc.const_data_ptr<scalar_t>(), mqc.const_data_ptr<scalar_t>(),
          pc.defined() ? pc.const_data_ptr<scalar_t>() : nullptr, V.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(),
          res.data_ptr<scalar_t>(), Q_next.data_ptr<scalar_t>(), (int)s.k, (int)s.d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::ScalarType out = Q.scalar_type();
  return {V.to(out), lam.to(out), res.to(out), Q_next.to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CUDA, m) { m.impl("ritz_step", &ritz_step_cuda); }

}  // namespace spectral_ops
