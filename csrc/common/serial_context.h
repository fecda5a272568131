// Execution context for one sample on one CPU thread.
//
// The per-sample maths in csrc/common is written against a small "context" interface so that
// the same code runs on one CPU thread (this file) and on one CUDA thread block
// (csrc/cuda/block_context.cuh):
//   for_each(n, f)          f(j) for j in [0, n) (split across threads on the GPU)
//   sum<T>(n, f)            sum_j f(j), the same value returned to every thread
//   first_index(n, pred)    lowest j with pred(j), or n if none, returned to every thread
//   argmax_abs(n, f)        lowest j maximising |f(j)|, returned to every thread
//   sync()                  barrier between phases (writes before it are visible after it)
//   leader()                true on exactly one thread (for small serial k x k work)
#pragma once

#include "macros.h"

namespace spectral_ops {

struct SerialContext {
  template <typename F>
  inline void for_each(int n, F f) const {
#pragma omp simd
    for (int j = 0; j < n; ++j) f(j);
  }

  template <typename T, typename F>
  inline T sum(int n, F f) const {
    T acc = T(0);
#pragma omp simd reduction(+ : acc)
    for (int j = 0; j < n; ++j) acc += f(j);
    return acc;
  }

  template <typename P>
  inline int first_index(int n, P pred) const {
    for (int j = 0; j < n; ++j)
      if (pred(j)) return j;
    return n;
  }

  template <typename T, typename F>
  inline int argmax_abs(int n, F f) const {
    int best = 0;
    T best_value = T(-1);
    for (int j = 0; j < n; ++j) {
      T a = abs_(f(j));
      if (a > best_value) { best_value = a; best = j; }
    }
    return best;
  }

  inline void sync() const {}
  inline bool leader() const { return true; }
};

}  // namespace spectral_ops
