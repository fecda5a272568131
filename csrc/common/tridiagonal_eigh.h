// Serial eigensolver for a small symmetric k x k matrix: Householder reduction to tridiagonal
// form, then implicit QL with Wilkinson shifts.  About 3x fewer operations than Jacobi sweeps,
// but one long serial chain, so the CPU uses it and the CUDA blocks use jacobi.h.
#pragma once

#include "macros.h"

namespace spectral_ops {

// sqrt(a^2 + b^2) without overflow or underflow in the squares.
template <typename T>
SPECTRAL_HD T hypot_(T a, T b) {
  a = abs_(a);
  b = abs_(b);
  if (a < b) {
    const T t = a;
    a = b;
    b = t;
  }
  if (a == T(0)) return T(0);
  const T ratio = b / a;
  return a * sqrt_(T(1) + ratio * ratio);
}

// Diagonalizes the symmetric row-major A (k x k, overwritten; used as work space) as
// A_in = U^T diag(A) U: the same contract as jacobi_eigh.  On exit diag(A) holds the eigenvalues,
// row i of U the eigenvector of A[i, i], and order[0..k) the indices sorted by eigenvalue,
// descending (ties keep the lower index first).  work: 2k entries.  Serial (one thread).
template <typename T>
SPECTRAL_HD void tridiagonal_eigh(T* A, T* U, int* order, T* work, int k) {
  T* diag = work;     // d: the tridiagonal's diagonal, then the eigenvalues
  T* off = work + k;  // e: its sub-diagonal
  // 1. Householder, last row first: A <- Z (the accumulated reflections), diag/off <- T.
  //    Row i is reduced against columns [0, i); its Householder vector is kept in row i and,
  //    scaled by 1/h, in column i, until the reflections are accumulated below.
  for (int i = k - 1; i > 0; --i) {
    const int l = i - 1;
    T* ai = A + i * k;
    T h = T(0);
    T scale = T(0);
    for (int c = 0; c <= l; ++c) scale += abs_(ai[c]);
    if (l == 0 || scale == T(0)) {
      off[i] = ai[l];
    } else {
      for (int c = 0; c <= l; ++c) {
        ai[c] /= scale;
        h += ai[c] * ai[c];
      }
      T f = ai[l];
      const T g0 = f >= T(0) ? -sqrt_(h) : sqrt_(h);
      off[i] = scale * g0;
      h -= f * g0;
      ai[l] = f - g0;
      f = T(0);
      for (int j = 0; j <= l; ++j) {
        A[j * k + i] = ai[j] / h;
        T g = T(0);  // (A u)_j over the lower triangle
        for (int c = 0; c <= j; ++c) g += A[j * k + c] * ai[c];
        for (int c = j + 1; c <= l; ++c) g += A[c * k + j] * ai[c];
        off[j] = g / h;
        f += off[j] * ai[j];
      }
      const T hh = f / (h + h);
      for (int j = 0; j <= l; ++j) {
        const T fj = ai[j];
        const T gj = off[j] - hh * fj;
        off[j] = gj;
        for (int c = 0; c <= j; ++c) A[j * k + c] -= fj * off[c] + gj * ai[c];
      }
    }
    diag[i] = h;
  }
  diag[0] = T(0);
  off[0] = T(0);
  for (int i = 0; i < k; ++i) {  // accumulate the reflections into Z, row by row
    if (diag[i] != T(0)) {
      for (int j = 0; j < i; ++j) {
        T g = T(0);
        for (int c = 0; c < i; ++c) g += A[i * k + c] * A[c * k + j];
        for (int c = 0; c < i; ++c) A[c * k + j] -= g * A[c * k + i];
      }
    }
    diag[i] = A[i * k + i];
    A[i * k + i] = T(1);
    for (int j = 0; j < i; ++j) A[j * k + i] = A[i * k + j] = T(0);
  }
  // U = Z^T, so that the QL rotations below act on rows of U (contiguous) rather than columns.
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) U[i * k + j] = A[j * k + i];
  // 2. Implicit QL on (diag, off), off shifted so that off[i] couples i and i + 1.
  for (int i = 1; i < k; ++i) off[i - 1] = off[i];
  off[k - 1] = T(0);
  const T eps = machine_eps<T>();
  for (int l = 0; l < k; ++l) {
    for (int iteration = 0; iteration < 60; ++iteration) {
      int m = l;  // the first negligible off-diagonal entry at or after l splits the matrix
      for (; m < k - 1; ++m)
        if (abs_(off[m]) <= eps * (abs_(diag[m]) + abs_(diag[m + 1]))) break;
      if (m == l) break;  // diag[l] is an eigenvalue
      // Wilkinson shift from the leading 2 x 2 block, then chase the bulge from m up to l.
      T g = (diag[l + 1] - diag[l]) / (T(2) * off[l]);
      T r = hypot_(g, T(1));
      g = diag[m] - diag[l] + off[l] / (g + (g >= T(0) ? r : -r));
      T s = T(1), c = T(1), p = T(0);
      bool deflated = false;
      for (int i = m - 1; i >= l; --i) {
        const T f = s * off[i];
        const T b = c * off[i];
        r = hypot_(f, g);
        off[i + 1] = r;
        if (r == T(0)) {  // exact underflow: split here and restart
          diag[i + 1] -= p;
          off[m] = T(0);
          deflated = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = diag[i + 1] - p;
        r = (diag[i] - g) * s + T(2) * c * b;
        p = s * r;
        diag[i + 1] = g + p;
        g = c * r - b;
        T* ui = U + i * k;
        T* un = U + (i + 1) * k;
        for (int j = 0; j < k; ++j) {  // rows i and i + 1 of U
          const T next = un[j];
          un[j] = s * ui[j] + c * next;
          ui[j] = c * ui[j] - s * next;
        }
      }
      if (deflated) continue;
      diag[l] -= p;
      off[l] = g;
      off[m] = T(0);
    }
  }
  for (int i = 0; i < k; ++i) A[i * k + i] = diag[i];
  order_diagonal_descending(A, order, k);
}

}  // namespace spectral_ops
