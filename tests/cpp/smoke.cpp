// C++ smoke test: the shared maths directly (Jacobi eigensolver on a known matrix), and the
// registered CPU ops through the dispatcher (orthonormality, Ritz values, loss range).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>

#include "common/jacobi.h"
#include "common/serial_context.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

int main() {
  // 1. Jacobi on [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5, 3, 1.
  double A[9] = {2, 1, 0, 1, 2, 0, 0, 0, 5}, U[9];
  int order[3];
  spectral_ops::jacobi_eigh(spectral_ops::SerialContext{}, A, U, order, 3);
  const double expected[3] = {5, 3, 1};
  bool values_ok = true;
  for (int i = 0; i < 3; ++i) values_ok &= std::fabs(A[order[i] * 4] - expected[i]) < 1e-14;
  expect(values_ok, "jacobi_eigh eigenvalues of a 3x3 matrix, descending");

  // 2. The ops through the dispatcher.
  auto& dispatcher = c10::Dispatcher::singleton();
  auto orthonormalize = dispatcher.findSchemaOrThrow("spectral_ops::orthonormalize", "")
                            .typed<at::Tensor(const at::Tensor&)>();
  auto ritz_step = dispatcher.findSchemaOrThrow("spectral_ops::ritz_step", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  auto alignment_loss = dispatcher.findSchemaOrThrow("spectral_ops::alignment_loss", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                                              c10::string_view)>();
  at::manual_seed(0);
  const at::Tensor W = at::randn({4, 3, 17}, at::kDouble);
  const at::Tensor Q = orthonormalize.call(W);
  const at::Tensor eye = at::eye(3, at::kDouble).expand({4, 3, 3});
  expect(at::allclose(at::matmul(Q, Q.transpose(1, 2)), eye, 0, 1e-12), "orthonormalize gives orthonormal rows");

  const at::Tensor scales = at::tensor({3.0, 2.0, 1.0}, at::kDouble).view({1, 3, 1});
  const auto [V, lam, res, Q_next] = ritz_step.call(Q, Q * scales, std::nullopt);
  const at::Tensor sorted_ok = lam.diff(1, 1).le(0).all();
  expect(sorted_ok.item<bool>() && res.abs().max().item<double>() < 1e-10, "ritz_step values sorted, residuals ~0");

  const at::Tensor loss = alignment_loss.call(Q, at::rand({4, 3}, at::kDouble), "offdiag", "singular");
  expect(loss.ge(0).all().item<bool>() && loss.le(1).all().item<bool>(), "alignment_loss in [0, 1]");

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
