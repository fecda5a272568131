// Execution context for one sample on one CUDA thread block (see common/serial_context.h for the
// interface), plus the launch helpers shared by the CUDA op files.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/batch.h"
#include "common/checks.h"
#include "common/macros.h"

namespace spectral_ops {

// Reductions are deterministic: fixed strided partial sums, warp shuffles, then warp totals
// summed in order by every thread.  blockDim.x must be a multiple of 32 (at most 1024).
template <typename T>
struct BlockContext {
  static constexpr bool kSerial = false;

  T* value_buffer;    // __shared__ [32]
  int* index_buffer;  // __shared__ [32]
  T* batch_buffer;    // __shared__ [batched_sums_width(k) * warps]: sums(), value c of warp w at c * warps + w

  template <typename F>
  __host__ __device__ void for_each(int n, F f) const {
#ifdef __CUDA_ARCH__
    for (int j = threadIdx.x; j < n; j += blockDim.x) f(j);
#endif
  }

  template <typename U, typename F>
  __host__ __device__ U sum(int n, F f) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::sum reduces values of type T");
#ifdef __CUDA_ARCH__
    U acc = U(0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) acc += f(j);
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    __syncthreads();  // earlier readers of value_buffer are done
    if ((threadIdx.x & 31) == 0) value_buffer[threadIdx.x >> 5] = acc;
    __syncthreads();
    U total = U(0);
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += value_buffer[w];
    return total;
#else
    return U(0);
#endif
  }

  // m <= batched_sums_width(k) sums with one pair of barriers: value after value, each thread's
  // strided partial sum and a warp shuffle (one accumulator live, no register array), the warp
  // totals parked in batch_buffer; after the barrier every thread adds them up in warp order.
  template <typename U, typename TermOf, typename Finish>
  __host__ __device__ void sums(int m, int n, TermOf term_of, Finish finish) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::sums reduces values of type T");
#ifdef __CUDA_ARCH__
    const int warps = (int)(blockDim.x >> 5), warp = (int)(threadIdx.x >> 5);
    __syncthreads();  // earlier readers of batch_buffer are done
    for (int c = 0; c < m; ++c) {
      const auto term = term_of(c);
      U acc = U(0);
      for (int j = threadIdx.x; j < n; j += blockDim.x) acc += term(j);
      for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
      if ((threadIdx.x & 31) == 0) batch_buffer[c * warps + warp] = acc;
    }
    __syncthreads();
    for (int c = 0; c < m; ++c) {
      U total = U(0);
      for (int w = 0; w < warps; ++w) total += batch_buffer[c * warps + w];
      finish(c, total);
    }
#endif
  }

  // Each thread owns columns j and sums the rows in ascending order (as the CPU does).
  template <typename U, typename Term, typename Finish>
  __host__ __device__ void for_each_row_sum(int n, int rows, Term term, Finish finish) const {
    for_each(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      finish(j, acc);
    });
  }

  template <typename U, typename Term, typename G>
  __host__ __device__ U sum_row_sums(int n, int rows, Term term, G g) const {
    return sum<U>(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      return g(j, acc);
    });
  }

  template <typename P>
  __host__ __device__ int first_index(int n, P pred) const {
#ifdef __CUDA_ARCH__
    int found = n;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      if (pred(j)) {
        found = j;
        break;
      }
    for (int offset = 16; offset > 0; offset >>= 1) found = min(found, __shfl_down_sync(0xffffffffu, found, offset));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) index_buffer[threadIdx.x >> 5] = found;
    __syncthreads();
    int best = n;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) best = min(best, index_buffer[w]);
    return best;
#else
    return n;
#endif
  }

  template <typename U, typename F>
  __host__ __device__ int argmax_abs(int n, F f) const {
#ifdef __CUDA_ARCH__
    T best_value = T(-1);
    int best = n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const T a = abs_(T(f(j)));
      if (a > best_value) {
        best_value = a;
        best = j;
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const T other_value = __shfl_down_sync(0xffffffffu, best_value, offset);
      const int other = __shfl_down_sync(0xffffffffu, best, offset);
      if (other_value > best_value || (other_value == best_value && other < best)) {
        best_value = other_value;
        best = other;
      }
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
      value_buffer[threadIdx.x >> 5] = best_value;
      index_buffer[threadIdx.x >> 5] = best;
    }
    __syncthreads();
    best_value = T(-1);
    best = n;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
      if (value_buffer[w] > best_value || (value_buffer[w] == best_value && index_buffer[w] < best)) {
        best_value = value_buffer[w];
        best = index_buffer[w];
      }
    }
    return best < n ? best : 0;
#else
    return 0;
#endif
  }

  template <typename U, typename F>
  __host__ __device__ U max_abs(int n, F f) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::max_abs reduces values of type T");
#ifdef __CUDA_ARCH__
    U best = U(0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const U a = abs_(U(f(j)));
      best = a > best ? a : best;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const U other = __shfl_down_sync(0xffffffffu, best, offset);
      best = other > best ? other : best;
    }
    __syncthreads();  // earlier readers of value_buffer are done
    if ((threadIdx.x & 31) == 0) value_buffer[threadIdx.x >> 5] = best;
    __syncthreads();
    U total = U(0);
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total = value_buffer[w] > total ? value_buffer[w] : total;
    return total;
#else
    return U(0);
#endif
  }

  __host__ __device__ void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }

  __host__ __device__ bool leader() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x == 0;
#else
    return true;
#endif
  }
};

// Carves typed arrays out of the kernel's dynamic shared memory in a fixed order; the host runs
// the same carve with a null base to get the byte count to launch with.
struct SharedCarver {
  unsigned char* base;
  size_t bytes = 0;

  template <typename U>
  __host__ __device__ U* take(long count) {
    bytes = (bytes + alignof(U) - 1) / alignof(U) * alignof(U);
    U* p = base != nullptr ? reinterpret_cast<U*>(base + bytes) : nullptr;
    bytes += (size_t)count * sizeof(U);
    return p;
  }
};

// The dynamic shared memory of the running kernel (its size is the launch's byte count).
__device__ inline unsigned char* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char spectral_dynamic_shared[];
  return spectral_dynamic_shared;
}

// The batch buffer of BlockContext::sums, the first array of every kernel's carve.
template <typename T>
__host__ __device__ T* take_batch_buffer(SharedCarver& carver, int k, int threads) {
  return carver.template take<T>((long)batched_sums_width(k) * (threads / 32));
}

// Declares the shared reduction buffers and a BlockContext<T> named `ctx` inside a kernel; its
// batch buffer comes first out of `carver` (see take_batch_buffer).
#define SPECTRAL_BLOCK_CONTEXT(T, carver, k)                                                       \
  __shared__ T spectral_value_buffer[32];                                                          \
  __shared__ int spectral_index_buffer[32];                                                        \
  const BlockContext<T> ctx {                                                                      \
    spectral_value_buffer, spectral_index_buffer, take_batch_buffer<T>(carver, k, (int)blockDim.x) \
  }

// Checks a carve's byte count against the default per-block limit of dynamic shared memory.
inline size_t checked_shared_bytes(const SharedCarver& carver) {
  TORCH_CHECK(carver.bytes <= 48 * 1024, "spectral_ops: ", carver.bytes, " bytes of shared memory per block");
  return carver.bytes;
}

// Threads per block: enough to cover d in one stride up to 256, in whole warps.
inline int threads_for(int64_t d) {
  const int64_t warps = (d + 31) / 32;
  return (int)(32 * (warps < 1 ? 1 : (warps > 8 ? 8 : warps)));
}

// The CUDA kernels keep k x k scratch in shared memory (sized by k at launch).
inline RowsShape check_cuda_rows(const at::Tensor& t, const char* name) {
  const RowsShape s = check_rows(t, name);
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(s.k <= kMaxCudaK, name, ": the CUDA kernels support k <= ", kMaxCudaK, ", got k=", s.k);
  return s;
}

}  // namespace spectral_ops
