// Cyclic Jacobi eigensolver for a small symmetric k x k matrix, shared by CPU and CUDA.
#pragma once

#include "macros.h"

namespace spectral_ops {

// Diagonalizes the symmetric row-major A (k x k, overwritten) as A_in = U diag(A) U^T.
// On exit diag(A) holds the eigenvalues, the columns of U the eigenvectors, and order[0..k)
// the column indices sorted by eigenvalue, descending (ties keep the lower index first).
// A, U and order must be visible to every thread of ctx; the leader writes the serial parts.
template <typename T, typename Ctx>
SPECTRAL_HD void jacobi_eigh(const Ctx& ctx, T* A, T* U, int* order, int k) {
  ctx.for_each(k * k, [&](int idx) { U[idx] = (idx / k == idx % k) ? T(1) : T(0); });
  ctx.sync();
  const T eps = machine_eps<T>();
  // Rotations preserve the Frobenius norm, so the absolute floor is fixed for the whole solve.
  const T negligible = eps * eps * sqrt_(ctx.template sum<T>(k * k, [&](int idx) { return A[idx] * A[idx]; }));
  for (int sweep = 0; sweep < 40; ++sweep) {
    int rotations = 0;  // the same count on every thread
    for (int p = 0; p < k - 1; ++p) {
      for (int q = p + 1; q < k; ++q) {
        const T apq = A[p * k + q];
        // Converged pair: a_pq is below rounding relative to its diagonal entries (or to ||A||).
        if (abs_(apq) <= eps * sqrt_(abs_(A[p * k + p] * A[q * k + q])) || abs_(apq) <= negligible) continue;
        ++rotations;
        const T theta = (A[q * k + q] - A[p * k + p]) / (T(2) * apq);
        const T at = abs_(theta);
        const T root = at > T(1) ? at * sqrt_(T(1) + (T(1) / at) * (T(1) / at)) : sqrt_(T(1) + at * at);
        const T t = (theta >= T(0) ? T(1) : T(-1)) / (at + root);
        const T c = T(1) / sqrt_(T(1) + t * t);
        const T s = t * c;
        ctx.sync();  // everyone has read A[p,p], A[q,q], A[p,q]
        ctx.for_each(k, [&](int r) {  // A <- A J, U <- U J
          const T arp = A[r * k + p], arq = A[r * k + q];
          A[r * k + p] = c * arp - s * arq;
          A[r * k + q] = s * arp + c * arq;
          const T urp = U[r * k + p], urq = U[r * k + q];
          U[r * k + p] = c * urp - s * urq;
          U[r * k + q] = s * urp + c * urq;
        });
        ctx.sync();
        ctx.for_each(k, [&](int r) {  // A <- J^T A, with the annihilated pair set to exactly 0
          const T apr = A[p * k + r], aqr = A[q * k + r];
          A[p * k + r] = r == q ? T(0) : c * apr - s * aqr;
          A[q * k + r] = r == p ? T(0) : s * apr + c * aqr;
        });
        ctx.sync();
      }
    }
    if (rotations == 0) break;
  }
  if (ctx.leader()) {
    for (int i = 0; i < k; ++i) order[i] = i;
    for (int i = 1; i < k; ++i) {  // insertion sort, stable, descending
      const int idx = order[i];
      const T value = A[idx * k + idx];
      int pos = i;
      while (pos > 0 && A[order[pos - 1] * (k + 1)] < value) { order[pos] = order[pos - 1]; --pos; }
      order[pos] = idx;
    }
  }
  ctx.sync();
}

}  // namespace spectral_ops
