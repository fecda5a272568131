"""Disentanglement and sample-quality statistics between latent codes and (predicted) factors.

- `mig`: Mutual Information Gap (Chen et al. 2018). For each factor v_j, the gap between the two
  largest mutual informations I(z_i; v_j) over code dimensions, divided by H(v_j); averaged. It
  also says which code dimension wins each factor and whether the winners are distinct.
- `mig_sup`: MIG-sup (Li et al. 2020). For each code dimension z_i, the gap between its two
  largest normalized mutual informations I(z_i; v_j) / H(v_j) over factors; averaged over code
  dimensions. It penalizes one dimension that carries several factors, which MIG cannot see.
- `dci`: Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018), from the
  feature importances of one regressor/classifier per factor, over varying factors only.
- `varying_mask`: which factor columns actually vary (the rule `mig` and `dci` share).
- `activeness`: how much the generator's output moves along each latent axis (E ||J e_i||).
- `frechet_distance`: Frechet distance between Gaussian fits of two feature sets (FID-like).

scikit-learn (the `eval` extra) is imported lazily by `mig` and `dci`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from spectral_ops.validation import check_int

__all__ = [
    "mig",
    "mig_sup",
    "dci",
    "varying_mask",
    "activeness",
    "activeness_summary",
    "frechet_distance",
    "discretize",
]

#: A factor column "varies" when at least this share of the rows differ from its most common
#: value (integer columns) or from its median by more than VARYING_ATOL (other columns).
VARYING_MIN_SHARE = 0.01
VARYING_ATOL = 1e-6


def _sklearn():
    try:
        import sklearn  # noqa: F401 - imported only to learn whether scikit-learn is installed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "spectral_ops.lab.metrics needs scikit-learn for MIG and DCI: "
            "pip install 'spectral_ops[lab]' (or pip install scikit-learn)"
        ) from exc
    return sklearn


def _as_2d_numpy(name: str, x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array (N >= 2 rows, >= 1 column), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _check_pair(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    codes = _as_2d_numpy("codes", codes)
    factors = _as_2d_numpy("factors", factors)
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"codes and factors must have the same number of rows, got {codes.shape[0]} and {factors.shape[0]}"
        )
    return codes, factors


def discretize(x: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Quantile-bin each column of x (N, C) into at most n_bins integer labels (N, C).

    Integer-valued columns with <= n_bins distinct values are kept as their own labels."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    out = np.empty(x.shape, dtype=np.int64)
    for c in range(x.shape[1]):
        col = x[:, c]
        uniq = np.unique(col)
        if len(uniq) <= n_bins and np.all(uniq == np.round(uniq)):
            out[:, c] = np.searchsorted(uniq, col)
            continue
        edges = np.quantile(col, np.linspace(0, 1, n_bins + 1)[1:-1])
        out[:, c] = np.searchsorted(np.unique(edges), col, side="right")
    return out


def _is_integer_column(col: np.ndarray) -> bool:
    return bool(np.all(col == np.round(col)))


def varying_mask(factors, *, min_share: float = VARYING_MIN_SHARE, atol: float = VARYING_ATOL) -> np.ndarray:
    """Which factor columns vary: a (K,) bool array.

    A column varies when at least `min_share` of its rows (default 1%) differ from its most common
    value (integer-valued columns, e.g. predicted levels or class indices), or from its median by
    more than `atol` (other columns). A handful of stray predictions on a generator that never
    draws another shape therefore does not make "shape" a varying factor.
    """
    factors = _as_2d_numpy("factors", factors)
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"min_share must lie in [0, 1), got {min_share}")
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    N = factors.shape[0]
    need = max(1, int(math.ceil(min_share * N)))
    out = np.zeros(factors.shape[1], dtype=bool)
    for j in range(factors.shape[1]):
        col = factors[:, j]
        if _is_integer_column(col):
            _, counts = np.unique(col, return_counts=True)
            off = N - counts.max()
        else:
            off = int((np.abs(col - np.median(col)) > atol).sum())
        out[j] = off >= need
    return out


def _check_varying(varying, K: int, factors: np.ndarray) -> np.ndarray:
    if varying is None:
        return varying_mask(factors)
    v = np.asarray(varying, dtype=bool).reshape(-1)
    if v.shape[0] != K:
        raise ValueError(f"varying must have one flag per factor ({K}), got {v.shape[0]}")
    return v


def _mi_matrix(codes: np.ndarray, factors: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Discrete mutual information (d, K) between binned codes and factors, and H(factors) (K,), nats."""
    from sklearn.metrics import mutual_info_score

    zc, vc = discretize(codes, n_bins), discretize(factors, n_bins)
    d, K = zc.shape[1], vc.shape[1]
    mi = np.zeros((d, K))
    for i in range(d):
        for j in range(K):
            mi[i, j] = mutual_info_score(zc[:, i], vc[:, j])
    ent = np.array([mutual_info_score(vc[:, j], vc[:, j]) for j in range(K)])
    return mi, ent


def _mig_sup_from(mi: np.ndarray, ent: np.ndarray, use: np.ndarray) -> tuple[float, list[float]]:
    """MIG-sup from an MI matrix: per code dim, top-two gap of I(z_i; v_j) / H(v_j) over used factors."""
    d = mi.shape[0]
    cols = np.flatnonzero(use)
    if len(cols) == 0:
        return 0.0, [0.0] * d
    nmi = mi[:, cols] / ent[cols][None, :]
    top = -np.sort(-nmi, axis=1)
    second = top[:, 1] if top.shape[1] > 1 else np.zeros(d)
    per = np.clip(top[:, 0] - second, 0.0, None)
    return float(per.mean()), [float(v) for v in per]


def mig(codes, factors, *, n_bins: int = 20, varying=None) -> dict:
    """Mutual Information Gap.

    Args:
        codes: (N, d) latent codes (continuous; quantile-binned into n_bins).
        factors: (N, K) factor values; integer columns with <= n_bins levels are used as labels,
            others are quantile-binned.
        n_bins: bins per continuous column.
        varying: optional K flags, the factors that vary; default `varying_mask(factors)`.

    Returns:
        {"mig": float in [0, 1], "per_factor": [K floats], "mi": (d, K) list of lists (nats),
         "entropy": [K floats] (nats), "varying_factors": int, "varying": [K bools],
         "winner_per_factor": [K ints or None] (the code dim with the largest MI with each
         varying factor), "distinct_winners": bool (no code dim wins two varying factors),
         "mig_sup": float, "mig_sup_per_latent": [d floats] (see `mig_sup`)}.
        A factor that does not vary (e.g. a generator that stopped drawing other shapes) is
        captured by no code, so it scores 0 and still counts in the mean; it has no winner.
    """
    _sklearn()
    codes, factors = _check_pair(codes, factors)
    check_int("n_bins", n_bins, 2)
    mi, ent = _mi_matrix(codes, factors, n_bins)
    d, K = mi.shape
    use = _check_varying(varying, K, factors) & (ent > 1e-12)
    per, winners = [], []
    for j in range(K):
        if not use[j]:
            per.append(0.0)
            winners.append(None)
            continue
        order = np.argsort(-mi[:, j], kind="stable")
        second = mi[order[1], j] if d > 1 else 0.0
        per.append(float((mi[order[0], j] - second) / ent[j]))
        winners.append(int(order[0]))
    won = [w for w in winners if w is not None]
    sup, sup_per = _mig_sup_from(mi, ent, use)
    return {
        "mig": float(np.mean(per)),
        "per_factor": per,
        "mi": mi.tolist(),
        "entropy": ent.tolist(),
        "varying_factors": int(use.sum()),
        "varying": [bool(v) for v in use],
        "winner_per_factor": winners,
        "distinct_winners": len(set(won)) == len(won),
        "mig_sup": sup,
        "mig_sup_per_latent": sup_per,
    }


def mig_sup(codes, factors, *, n_bins: int = 20, varying=None) -> dict:
    """MIG-sup (Li, Murkute, Gyawali & Wang 2020): for each code dimension z_i, the gap between its
    two largest normalized mutual informations I(z_i; v_j) / H(v_j) over the varying factors,
    averaged over all d code dimensions (an unused dimension scores 0). 1 when every dimension
    encodes exactly one factor completely; it drops when one dimension carries several factors.

    Args: as `mig`.

    Returns:
        {"mig_sup": float in [0, 1], "per_latent": [d floats], "varying_factors": int}.
    """
    _sklearn()
    codes, factors = _check_pair(codes, factors)
    check_int("n_bins", n_bins, 2)
    mi, ent = _mi_matrix(codes, factors, n_bins)
    use = _check_varying(varying, mi.shape[1], factors) & (ent > 1e-12)
    sup, per = _mig_sup_from(mi, ent, use)
    return {"mig_sup": sup, "per_latent": per, "varying_factors": int(use.sum())}


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of a nonnegative matrix (rows normalised), in log base `base`."""
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return h / math.log(base) if base > 1 else np.zeros(p.shape[0])


def dci(
    codes,
    factors,
    *,
    categorical: Sequence[bool] | None = None,
    model: str = "gbt",
    train_fraction: float = 0.8,
    seed: int = 0,
    varying=None,
) -> dict:
    """Disentanglement, Completeness and Informativeness, over the VARYING factors only.

    One predictor per varying factor maps codes (N, d) to the factor; its feature importances
    form the (d, K') importance matrix R (K' varying factors). Disentanglement =
    sum_i rho_i (1 - H_K'(R_i.)), rho_i the share of total importance of code i; completeness =
    mean_j (1 - H_d(R_.j)); informativeness = mean over varying factors of test accuracy
    (categorical) or test R^2 clipped to [0, 1] (continuous).

    A factor that does not vary (`varying_mask`: fewer than 1% of the rows off its most common
    value) is left out of the entropies and of the means: counting it would give it
    informativeness 1 for free and inflate D through the log base. The output counts it
    separately. With a single varying factor D is 1 by definition (there is nothing to entangle
    it with): read D together with `varying_factors`.

    Args:
        codes: (N, d) latent codes.
        factors: (N, K) factor values (categorical ones as integer labels).
        categorical: K flags; default: integer columns with <= 20 levels are categorical.
        model: "gbt" (gradient-boosted trees, as in disentanglement_lib), "forest" (random forest)
            or "lasso" (linear, |coefficients| as importance; categorical factors use a logistic
            regression).
        train_fraction: share of rows used to fit; the rest measure informativeness.
        seed: seed of the split and the models.
        varying: optional K flags, the factors that vary; default `varying_mask(factors)`.

    Returns:
        {"disentanglement", "completeness", "informativeness": floats in [0, 1] (0 when no factor
         varies), "importance": (d, K) list of lists (zero columns for constant factors),
         "informativeness_per_factor": [K floats, None for constant factors],
         "varying": [K bools], "varying_factors": int, "constant_factors": [indices]}.
    """
    _sklearn()
    if model not in ("gbt", "forest", "lasso"):
        raise ValueError(f"model must be 'gbt', 'forest' or 'lasso', got {model!r}")
    if not 0.1 <= train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in [0.1, 1), got {train_fraction}")
    codes, factors = _check_pair(codes, factors)
    N, d = codes.shape
    K = factors.shape[1]
    if categorical is None:
        categorical = [
            bool(np.all(factors[:, j] == np.round(factors[:, j])) and len(np.unique(factors[:, j])) <= 20)
            for j in range(K)
        ]
    if len(categorical) != K:
        raise ValueError(f"categorical must have one flag per factor ({K}), got {len(categorical)}")
    vary = _check_varying(varying, K, factors).copy()
    perm = np.random.default_rng(seed).permutation(N)
    n_train = max(2, int(N * train_fraction))
    tr, te = perm[:n_train], perm[n_train:]
    mu, sd = codes[tr].mean(0), codes[tr].std(0) + 1e-8
    x = (codes - mu) / sd
    R = np.zeros((d, K))
    info: list[float | None] = [None] * K
    for j in np.flatnonzero(vary):
        fitted = _fit_factor(x, factors[:, j], tr, te, bool(categorical[j]), model, seed)
        if fitted is None:  # varies overall but not in the training split
            vary[j] = False
            continue
        info[j], R[:, j] = fitted
    cols = np.flatnonzero(vary)
    dis, comp = _dci_scores(R[:, cols], d)
    used = [info[j] for j in cols if info[j] is not None]
    return {
        "disentanglement": dis,
        "completeness": comp,
        "informativeness": float(np.nanmean(used)) if used else 0.0,
        "importance": R.tolist(),
        "informativeness_per_factor": info,
        "varying": [bool(v) for v in vary],
        "varying_factors": int(len(cols)),
        "constant_factors": [int(j) for j in np.flatnonzero(~vary)],
    }


def _dci_model(model: str, categorical: bool, seed: int):
    """The sklearn estimator DCI fits for one factor (disentanglement_lib's sizes for gbt)."""
    from sklearn import ensemble, linear_model

    if model == "gbt":
        kind = ensemble.GradientBoostingClassifier if categorical else ensemble.GradientBoostingRegressor
        return kind(n_estimators=30, max_depth=3, random_state=seed)
    if model == "forest":
        kind = ensemble.RandomForestClassifier if categorical else ensemble.RandomForestRegressor
        return kind(n_estimators=50, max_depth=8, random_state=seed, n_jobs=1)
    return (
        linear_model.LogisticRegression(max_iter=500) if categorical else linear_model.LassoCV(cv=3, random_state=seed)
    )


def _fit_factor(x: np.ndarray, y: np.ndarray, tr, te, categorical: bool, model: str, seed: int):
    """(test informativeness, |importance| (d,)) of one factor y (N,) from codes x (N, d), or
    None when y does not vary on the training rows.  Informativeness: accuracy (categorical) or
    R^2 clipped to [0, 1] (continuous); importances: feature importances, |coefficients| for lasso."""
    y = y.astype(np.int64) if categorical else y.astype(np.float64)
    if (len(np.unique(y[tr])) < 2) if categorical else (np.std(y[tr]) < 1e-12):
        return None
    m = _dci_model(model, categorical, seed)
    m.fit(x[tr], y[tr])
    score = float(m.score(x[te], y[te])) if len(te) else float("nan")  # accuracy, or R^2 for regressors
    if not categorical:
        score = float(np.clip(score, 0.0, 1.0))
    if model == "lasso":
        imp = np.abs(m.coef_).sum(0) if categorical else np.abs(m.coef_)
    else:
        imp = m.feature_importances_
    return score, np.abs(imp)


def _dci_scores(R: np.ndarray, d: int) -> tuple[float, float]:
    """(disentanglement, completeness) from the importance matrix R (d, K') of the varying factors."""
    Kv, total = R.shape[1], R.sum()
    if Kv == 0 or total <= 0:
        return 0.0, 0.0
    dis_i = 1.0 - _entropy_rows(R, Kv) if Kv > 1 else np.ones(d)
    rho = R.sum(1) / total
    col = R.T[R.sum(0) > 0]
    comp = float((1.0 - _entropy_rows(col, d)).mean()) if len(col) else 0.0
    return float((rho * dis_i).sum()), comp


@torch.no_grad()
def activeness(G: Callable[[Tensor], Tensor], z: Tensor, *, eps: float = 0.05, chunk: int = 256) -> Tensor:
    """Per-dimension activeness: E_z ||G(z + eps e_i) - G(z - eps e_i)|| / (2 eps) for each axis i.

    Args:
        G: generator, (N, d) -> (N, ...).
        z: (B, d) latent points.
        eps: central-difference step.

    Returns:
        (d,) float32 tensor, the mean finite-difference Jacobian column norm ||J e_i||.
    """
    if not isinstance(z, Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a 2-D tensor (B, d), got {getattr(z, 'shape', type(z))}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    B, d = z.shape
    total = torch.zeros(d, dtype=torch.float64)
    eye = torch.eye(d, dtype=z.dtype, device=z.device) * eps
    for start in range(0, B, chunk):
        zc = z[start : start + chunk]
        n = zc.shape[0]
        zp = (zc[:, None, :] + eye[None]).reshape(n * d, d)
        zm = (zc[:, None, :] - eye[None]).reshape(n * d, d)
        diff = (G(zp) - G(zm)).reshape(n, d, -1).float()
        total += (diff.norm(dim=2) / (2 * eps)).sum(0).double().cpu()
    return (total / B).float()


def activeness_summary(a: Tensor, *, threshold: float = 0.1) -> dict:
    """Summarise per-dimension activeness (d,): dims above threshold * max are "active";
    effective_dims = exp(entropy of a / sum a) (d for a flat profile, 1 for a single axis)."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    if a.numel() == 0:
        raise ValueError("activeness must have at least one entry")
    s = a.sum()
    if s <= 0:
        return {"per_dim": a.tolist(), "active_dims": 0, "effective_dims": 0.0}
    p = a / s
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return {
        "per_dim": [round(float(v), 5) for v in a],
        "active_dims": int((a > threshold * a.max()).sum()),
        "effective_dims": float(ent.exp()),
    }


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features a (N, F) and b (M, F):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed in float64."""
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(
            f"features must be (N, F) and (M, F) with N, M >= 2, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ev, U = torch.linalg.eigh(sa)
    sa_half = (U * ev.clamp_min(0).sqrt()) @ U.T
    mid = torch.linalg.eigvalsh(sa_half @ sb @ sa_half).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * mid
    return float(fd.clamp_min(0))
