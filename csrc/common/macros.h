// Portability macros for the header-only maths shared by the CPU and CUDA backends.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define SPECTRAL_HD __host__ __device__ __forceinline__
#else
#define SPECTRAL_HD inline
#endif

namespace spectral_ops {

// The constants shared with Python, from their one definition (spectral_ops/ops/constants.def,
// also parsed by spectral_ops/ops/constants.py), as spectral_ops::constants::NAME.
namespace constants {
#define SPECTRAL_CONSTANT(name, value) constexpr auto name = value;
#include "../../spectral_ops/ops/constants.def"
#undef SPECTRAL_CONSTANT
}  // namespace constants

// Largest k the CUDA kernels support (k x k scratch lives in shared memory).
constexpr int kMaxCudaK = constants::MAX_CUDA_K;

SPECTRAL_HD float sqrt_(float x) { return sqrtf(x); }
SPECTRAL_HD double sqrt_(double x) { return sqrt(x); }

SPECTRAL_HD float abs_(float x) { return fabsf(x); }
SPECTRAL_HD double abs_(double x) { return fabs(x); }

// Branch-free, so that it vectorizes (and does not mispredict on random signs).
template <typename T>
SPECTRAL_HD T sign_(T x) {
  return T(x > T(0)) - T(x < T(0));
}

// Relative norm below which a Gram-Schmidt residual counts as linearly dependent
// (constants.def; reference.rank_tolerance reads the same values).
template <typename T>
SPECTRAL_HD T rank_tolerance();
template <>
SPECTRAL_HD float rank_tolerance<float>() {
  return static_cast<float>(constants::RANK_TOLERANCE_FLOAT32);
}
template <>
SPECTRAL_HD double rank_tolerance<double>() {
  return constants::RANK_TOLERANCE_FLOAT64;
}

// order[0..k) = the indices of the diagonal of the row-major k x k A, sorted by value descending
// (stable: ties keep the lower index first).  The eigensolvers' output order.
template <typename T>
SPECTRAL_HD void order_diagonal_descending(const T* A, int* order, int k) {
  for (int i = 0; i < k; ++i) order[i] = i;
  for (int i = 1; i < k; ++i) {  // insertion sort
    const int idx = order[i];
    const T value = A[idx * (k + 1)];
    int pos = i;
    while (pos > 0 && A[order[pos - 1] * (k + 1)] < value) {
      order[pos] = order[pos - 1];
      --pos;
    }
    order[pos] = idx;
  }
}

// A quiet NaN: the outputs of a sample whose input holds NaN or Inf.
template <typename T>
SPECTRAL_HD T quiet_nan();
template <>
SPECTRAL_HD float quiet_nan<float>() {
  return nanf("");
}
template <>
SPECTRAL_HD double quiet_nan<double>() {
  return nan("");
}

// 0 for a finite x, NaN for +-Inf and NaN (IEEE arithmetic: the kernels are built without
// -ffast-math).  Summed over an array, it tests the whole array for finiteness in one reduction.
template <typename T>
SPECTRAL_HD T nonfinite_probe(T x) {
  return x - x;
}

template <typename T>
SPECTRAL_HD T machine_eps();
template <>
SPECTRAL_HD float machine_eps<float>() {
  return 1.1920929e-07f;
}
template <>
SPECTRAL_HD double machine_eps<double>() {
  return 2.220446049250313e-16;
}

}  // namespace spectral_ops
