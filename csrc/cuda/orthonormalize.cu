// orthonormalize / orthonormalize_backward on CUDA: one thread block per sample
// (maths: common/gram_schmidt.h, the code the CPU tests exercise).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/gram_schmidt.h"
#include "cuda/block_context.cuh"

namespace spectral_ops {
namespace {

template <typename T>
__global__ void orthonormalize_kernel(const T* __restrict__ W, T* __restrict__ Q, int k, int d) {
  SharedCarver carver{dynamic_shared()};
  SPECTRAL_BLOCK_CONTEXT(T, carver, k);
  T coef[kMaxCudaK];  // per-thread CGS2 coefficients (k - 1 at most)
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  orthonormalize_rows(ctx, W + offset, Q + offset, k, d, coef);
}

// L and M (k x k each), after the batch buffer, in dynamic shared memory.
template <typename T>
__host__ __device__ T* carve_backward_scratch(SharedCarver& carver, int k) {
  return carver.take<T>(2L * k * k);
}

template <typename T>
__global__ void orthonormalize_backward_kernel(const T* grad_Q, const T* Q, const T* W, T* grad_W, int k, int d) {
  SharedCarver carver{dynamic_shared()};
  SPECTRAL_BLOCK_CONTEXT(T, carver, k);
  T* L = carve_backward_scratch<T>(carver, k);
  T* M = L + k * k;
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  orthonormalize_backward_rows(ctx, grad_Q + offset, Q + offset, W + offset, grad_W + offset, k, d, L, M);
}

at::Tensor orthonormalize_cuda(const at::Tensor& W) {
  const RowsShape s = check_cuda_rows(W, "W");
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor wc = as_compute(W, compute_dtype(W.scalar_type()));
  at::Tensor Q = at::empty_like(wc);
  if (s.B == 0) return Q.to(W.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "orthonormalize_cuda", [&] {
    const int threads = threads_for(s.d);
    SharedCarver carver{nullptr};
    take_batch_buffer<scalar_t>(carver, (int)s.k, threads);
    orthonormalize_kernel<scalar_t><<<s.B, threads, checked_shared_bytes(carver), c10::cuda::getCurrentCUDAStream()>>>(
        wc.const_data_ptr<scalar_t>(), Q.data_ptr<scalar_t>(), (int)s.k, (int)s.d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return Q.to(W.scalar_type());
}

at::Tensor orthonormalize_backward_cuda(const at::Tensor& grad_Q, const at::Tensor& Q, const at::Tensor& W) {
  const RowsShape s = check_cuda_rows(W, "W");
  check_same_shape(Q, "Q", W, "W");
  check_same_shape(grad_Q, "grad_Q", W, "W");
  const c10::cuda::CUDAGuard guard(W.device());
  const at::ScalarType ct = compute_dtype(W.scalar_type());
  const at::Tensor gc = as_compute(grad_Q, ct), qc = as_compute(Q, ct), wc = as_compute(W, ct);
  at::Tensor grad_W = at::empty_like(wc);
  if (s.B == 0) return grad_W.to(grad_Q.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(ct, "orthonormalize_backward_cuda", [&] {
    const int threads = threads_for(s.d);
    SharedCarver carver{nullptr};
    take_batch_buffer<scalar_t>(carver, (int)s.k, threads);
    carve_backward_scratch<scalar_t>(carver, (int)s.k);
    orthonormalize_backward_kernel<scalar_t>
        <<<s.B, threads, checked_shared_bytes(carver), c10::cuda::getCurrentCUDAStream()>>>(
            gc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
            grad_W.data_ptr<scalar_t>(), (int)s.k, (int)s.d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_W.to(grad_Q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CUDA, m) {
  m.impl("orthonormalize", &orthonormalize_cuda);
  m.impl("orthonormalize_backward", &orthonormalize_backward_cuda);
}

}  // namespace spectral_ops
