// Execution context for one sample on one CPU thread.
//
// The per-sample maths in csrc/common is written against a small "context" interface so that
// the same code runs on one CPU thread (this file) and on one CUDA thread block
// (csrc/cuda/block_context.cuh):
//   for_each(n, f)          f(j) for j in [0, n) (split across threads on the GPU)
//   sum<T>(n, f)            sum_j f(j), the same value returned to every thread
//   sums<T>(m, n, term_of, finish)
//                           finish(c, sum_j term_of(c)(j)) for c in [0, m), m <= batched_sums_width(k)
//                           (batch.h): m reductions under one pair of barriers.  term_of(c) returns
//                           the term j -> T of value c (its setup runs once per value); term_of and
//                           then finish are called for c = 0, 1, ..., m - 1 in order on every thread
//   for_each_row_sum<T>(n, rows, term, finish)
//                           finish(j, sum_{l < rows} term(l, j)) for j in [0, n): a linear
//                           combination of `rows` row vectors, evaluated column by column
//   sum_row_sums<T>(n, rows, term, g)
//                           sum_j g(j, sum_{l < rows} term(l, j)), returned to every thread
//   first_index(n, pred)    lowest j with pred(j), or n if none, returned to every thread
//   argmax_abs(n, f)        lowest j maximising |f(j)|, returned to every thread
//   max_abs<T>(n, f)        max_j |f(j)| (0 if n == 0), returned to every thread; NaN terms may
//                           be skipped or returned (callers test finiteness separately)
//   sync()                  barrier between phases (writes before it are visible after it)
//   leader()                true on exactly one thread (for small serial k x k work)
//   kSerial                 true when the context is a single thread
// for_each and the reductions split j the same way, so a thread may read without a barrier the
// entries it wrote in an earlier for_each over the same n.  On a thread block the five reductions
// (sum, sums, first_index, argmax_abs, max_abs) are block_reduce.h's one reducer.
#pragma once

#include "batch.h"
#include "macros.h"

namespace spectral_ops {

struct SerialContext {
  static constexpr bool kSerial = true;  // one thread: serial algorithms are allowed

  template <typename F>
  inline void for_each(int n, F f) const {
#pragma omp simd
    for (int j = 0; j < n; ++j) f(j);
  }

  // kSumLanes independent partial sums (several vector registers), so that a long sum is not
  // limited by the latency of one chain of vector additions.
  template <typename T, typename F>
  inline T sum(int n, F f) const {
    T part[kSumLanes] = {};
    int j0 = 0;
    for (; j0 + kSumLanes <= n; j0 += kSumLanes) {
#pragma omp simd
      for (int j = j0; j < j0 + kSumLanes; ++j) part[(unsigned)(j - j0)] += f(j);
    }
    for (int j = j0; j < n; ++j) part[0] += f(j);
    // Folded as a vector reduction (measured 1.1-1.6x faster on rows of 32-128 than folding
    // the lanes by hand).
    T total = T(0);
#pragma omp simd reduction(+ : total)
    for (int u = 0; u < kSumLanes; ++u) total += part[u];
    return total;
  }

  // One sum per value, as sum() would give it (the CPU results do not depend on the batching).
  template <typename T, typename TermOf, typename Finish>
  inline void sums(int m, int n, TermOf term_of, Finish finish) const {
    for (int c = 0; c < m; ++c) finish(c, sum<T>(n, term_of(c)));
  }

  // The row sums run over column chunks held in a stack accumulator, so that the inner loop is
  // over contiguous j (one vector load per row) rather than over the rows (strided gathers).
  template <typename T, typename Term, typename Finish>
  inline void for_each_row_sum(int n, int rows, Term term, Finish finish) const {
    T acc[kRowSumChunk];
    for (int j0 = 0; j0 < n; j0 += kRowSumChunk) {
      const int end = n - j0 < kRowSumChunk ? n : j0 + kRowSumChunk;
      accumulate_rows(acc, j0, end, rows, term);
#pragma omp simd
      for (int j = j0; j < end; ++j) finish(j, acc[(unsigned)(j - j0)]);
    }
  }

  template <typename T, typename Term, typename G>
  inline T sum_row_sums(int n, int rows, Term term, G g) const {
    T acc[kRowSumChunk];
    T total = T(0);
    for (int j0 = 0; j0 < n; j0 += kRowSumChunk) {
      const int end = n - j0 < kRowSumChunk ? n : j0 + kRowSumChunk;
      accumulate_rows(acc, j0, end, rows, term);
#pragma omp simd reduction(+ : total)
      for (int j = j0; j < end; ++j) total += g(j, acc[(unsigned)(j - j0)]);
    }
    return total;
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
      if (a > best_value) {
        best_value = a;
        best = j;
      }
    }
    return best;
  }

  // A vectorized max reduction (the compare-and-select skips NaN terms).
  template <typename T, typename F>
  inline T max_abs(int n, F f) const {
    T best = T(0);
#pragma omp simd reduction(max : best)
    for (int j = 0; j < n; ++j) {
      const T a = abs_(f(j));
      best = a > best ? a : best;
    }
    return best;
  }

  inline void sync() const {}
  inline bool leader() const { return true; }

 private:
  static constexpr int kRowSumChunk = 128;
  static constexpr int kSumLanes = 16;

  // acc[j - j0] = sum_{l < rows} term(l, j) for j in [j0, end), rows in ascending order.  The
  // loop variable is j itself: Python's build flags include -fwrapv, under which an index like
  // j0 + jj is not provably affine, and the loads would be scalarized.
  template <typename T, typename Term>
  static inline void accumulate_rows(T* acc, int j0, int end, int rows, Term& term) {
#pragma omp simd
    for (int j = j0; j < end; ++j) acc[(unsigned)(j - j0)] = T(0);
    for (int l = 0; l < rows; ++l) {
#pragma omp simd
      for (int j = j0; j < end; ++j) acc[(unsigned)(j - j0)] += term(l, j);
    }
  }
};

}  // namespace spectral_ops
