// Parallel-order (round-robin) Jacobi eigensolver for a small symmetric k x k matrix, shared by
// the CPU and CUDA backends.
#pragma once

#include "macros.h"

namespace spectral_ops {

// The m-th pair (p < q) of round `step` of a round-robin tournament between n players (n even):
// player 0 stays put and the others rotate, so the n - 1 rounds of a sweep meet every pair once,
// and the n / 2 pairs of one round are disjoint.
SPECTRAL_HD void round_robin_pair(int n, int step, int m, int& p, int& q) {
  const auto player = [&](int pos) { return pos == 0 ? 0 : (pos - 1 + step) % (n - 1) + 1; };
  const int a = player(m), b = player(n - 1 - m);
  p = a < b ? a : b;
  q = a < b ? b : a;
}

// Diagonalizes the symmetric row-major A (k x k, overwritten) as A_in = U^T diag(A) U.
// On exit diag(A) holds the eigenvalues, row i of U the eigenvector of A[i, i], and order[0..k)
// the indices sorted by eigenvalue, descending (ties keep the lower index first).
// A, U, order and rot (k + 1 entries of scratch) must be visible to every thread of ctx.
//
// Each round rotates n / 2 disjoint pairs at once: their angles do not depend on each other, so
// they are computed together (in parallel on a GPU; overlapped by the CPU's out-of-order core),
// instead of one long chain of dependent square roots and divisions as in the cyclic order; and
// the rotations are applied together, one 2 x 2 block of A per thread.  Two barriers per round.
template <typename T, typename Ctx>
SPECTRAL_HD void jacobi_eigh(const Ctx& ctx, T* A, T* U, int* order, T* rot, int k) {
  ctx.for_each(k * k, [&](int idx) { U[idx] = (idx / k == idx % k) ? T(1) : T(0); });
  ctx.sync();
  const T eps = machine_eps<T>();
  // Rotations preserve the Frobenius norm, so the absolute floor is fixed for the whole solve.
  const T negligible = eps * eps * sqrt_(ctx.template sum<T>(k * k, [&](int idx) { return A[idx] * A[idx]; }));
  const int n = k + (k & 1);  // players; when k is odd, player k is a bye
  const int pairs = n / 2;
  for (int sweep = 0; sweep < 40; ++sweep) {
    int rotations = 0;  // the same count on every thread
    for (int step = 0; step + 1 < n; ++step) {
      // 1. The angle of every pair in this round: rot[2m] = c, rot[2m + 1] = s (s = 0: no rotation).
      ctx.for_each(pairs, [&](int m) {
        int p, q;
        round_robin_pair(n, step, m, p, q);
        T c = T(1), s = T(0);
        // Converged pair: a_pq is below rounding relative to its diagonal entries (or to ||A||).
        // A bye (q == k, odd k) never rotates, and never reads A[q * k + q], which is past the end.
        const T apq = q < k ? A[p * k + q] : T(0);
        if (q < k && !(abs_(apq) <= eps * sqrt_(abs_(A[p * k + p] * A[q * k + q])) || abs_(apq) <= negligible)) {
          const T theta = (A[q * k + q] - A[p * k + p]) / (T(2) * apq);
          const T at = abs_(theta);
          const T root = at > T(1) ? at * sqrt_(T(1) + (T(1) / at) * (T(1) / at)) : sqrt_(T(1) + at * at);
          const T t = (theta >= T(0) ? T(1) : T(-1)) / (at + root);
          c = T(1) / sqrt_(T(1) + t * t);
          s = t * c;
        }
        rot[2 * m] = c;
        rot[2 * m + 1] = s;
      });
      ctx.sync();
      int active = 0;
      for (int m = 0; m < pairs; ++m) active += rot[2 * m + 1] != T(0);
      if (active == 0) {
        ctx.sync();  // every thread has read rot before the next round writes it
        continue;
      }
      rotations += active;
      // 2. A <- J^T A J and U <- J^T U, all pairs at once: the rotation of pair P mixes rows
      // {p_P, q_P}, that of pair Q columns {p_Q, q_Q}, so each 2 x 2 block (P, Q) of A and each
      // column of the two U rows of a pair is owned by one thread: no barrier between the pairs.
      const int blocks = pairs * pairs;
      ctx.for_each(blocks + pairs * k, [&](int item) {
        if (item < blocks) {
          const int P = item / pairs, Qp = item % pairs;
          const T cr = rot[2 * P], sr = rot[2 * P + 1], cc = rot[2 * Qp], sc = rot[2 * Qp + 1];
          if (sr == T(0) && sc == T(0)) return;
          int a, b, x, y;
          round_robin_pair(n, step, P, a, b);
          round_robin_pair(n, step, Qp, x, y);
          // A bye (index k, odd k) is never rotated, and its row / column lies past the end.
          T ax = A[a * k + x];
          T ay = y < k ? A[a * k + y] : T(0);
          T bx = b < k ? A[b * k + x] : T(0);
          T by = b < k && y < k ? A[b * k + y] : T(0);
          if (sc != T(0)) {  // columns first, as A J then J^T (A J)
            const T ax0 = ax, bx0 = bx;
            ax = cc * ax0 - sc * ay;
            ay = sc * ax0 + cc * ay;
            bx = cc * bx0 - sc * by;
            by = sc * bx0 + cc * by;
          }
          if (sr != T(0)) {  // rows; the annihilated pair (diagonal block) is set to exactly 0
            const T ax0 = ax, ay0 = ay;
            ax = x == b ? T(0) : cr * ax0 - sr * bx;
            bx = x == a ? T(0) : sr * ax0 + cr * bx;
            ay = y == b ? T(0) : cr * ay0 - sr * by;
            by = y == a ? T(0) : sr * ay0 + cr * by;
          }
          A[a * k + x] = ax;
          if (y < k) A[a * k + y] = ay;
          if (b < k) A[b * k + x] = bx;
          if (b < k && y < k) A[b * k + y] = by;
        } else {
          const int P = (item - blocks) / k, r = (item - blocks) % k;
          const T c = rot[2 * P], sn = rot[2 * P + 1];
          if (sn == T(0)) return;
          int p, q;
          round_robin_pair(n, step, P, p, q);
          const T upr = U[p * k + r], uqr = U[q * k + r];
          U[p * k + r] = c * upr - sn * uqr;
          U[q * k + r] = sn * upr + c * uqr;
        }
      });
      ctx.sync();
    }
    if (rotations == 0) break;
  }
  if (ctx.leader()) order_diagonal_descending(A, order, k);
  ctx.sync();
}

}  // namespace spectral_ops
