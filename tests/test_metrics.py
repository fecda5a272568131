"""MIG / DCI against codes with a known answer; activeness, Frechet distance, factor predictor."""

import re

import numpy as np
import pytest
import torch

from spectral_ops.lab.metrics import (
    PredictorConfig,
    activeness,
    activeness_summary,
    axis_alignment,
    chance_alignment,
    dci,
    discretize,
    frechet_distance,
    load_or_fit_predictor,
    mig,
    mig_sup,
    oracle_generator,
    varying_mask,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codes():
    """4 discrete factors (10 levels); a code that stores each in its own axis (+ 2 noise axes),
    and the same code after a random rotation."""
    rng = np.random.default_rng(0)
    N, K = 4000, 4
    levels = rng.integers(0, 10, (N, K))
    z = np.concatenate([levels + rng.uniform(0, 1, (N, K)), rng.normal(size=(N, 2))], 1)
    z = (z - z.mean(0)) / z.std(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    return z, z @ Q, levels


def test_mig_disentangled_vs_rotated(codes):
    z, zr, f = codes
    good, bad = mig(z, f), mig(zr, f)
    assert good["mig"] > 0.9
    assert bad["mig"] < 0.15
    assert np.array(good["mi"]).shape == (6, 4)
    # permuting code axes does not change MIG
    assert abs(mig(z[:, ::-1], f)["mig"] - good["mig"]) < 1e-9


def test_dci_disentangled_vs_rotated(codes):
    z, zr, f = codes
    cat = [False] * 4
    good = dci(z, f, categorical=cat)
    assert good["disentanglement"] > 0.95 and good["completeness"] > 0.95 and good["informativeness"] > 0.95
    lin_good, lin_bad = dci(z, f, categorical=cat, model="lasso"), dci(zr, f, categorical=cat, model="lasso")
    assert lin_good["disentanglement"] > 0.95 and lin_good["completeness"] > 0.95
    # a rotation keeps the information but spreads every factor over all axes
    assert lin_bad["disentanglement"] < 0.25 and lin_bad["completeness"] < 0.25
    assert lin_bad["informativeness"] > 0.95
    # trees see a rotated linear code as a sum of many weak splits: lower, but not zero
    bad = dci(zr, f, categorical=cat)
    assert bad["disentanglement"] < 0.5 and bad["completeness"] < 0.5


def test_dci_categorical_factor():
    rng = np.random.default_rng(1)
    shape = rng.integers(0, 3, 1500)
    z = np.stack([shape + 0.1 * rng.normal(size=1500), rng.normal(size=1500)], 1)
    out = dci(z, shape[:, None], categorical=[True])
    assert out["informativeness"] > 0.95
    imp = np.array(out["importance"])
    assert imp[0, 0] > 10 * imp[1, 0]


def test_discretize_and_bad_input():
    x = np.stack([np.arange(100.0), np.repeat([0.0, 1.0], 50)], 1)
    d = discretize(x, 10)
    assert d[:, 0].max() == 9 and len(np.unique(d[:, 0])) == 10
    assert set(np.unique(d[:, 1])) == {0, 1}
    with pytest.raises(ValueError, match="same number of rows"):
        mig(np.zeros((10, 2)), np.zeros((9, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        dci(np.full((10, 2), np.nan), np.zeros((10, 1)))
    with pytest.raises(ValueError, match="model"):
        dci(np.zeros((10, 2)), np.zeros((10, 1)), model="svm")


def test_activeness_of_a_linear_map():
    A = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 4.0]]).T  # (d=3, m=4)
    G = lambda z: z @ A  # z (N, 3) -> (N, 4)
    a = activeness(G, torch.randn(7, 3))
    torch.testing.assert_close(a, A.norm(dim=1), rtol=1e-4, atol=1e-5)
    s = activeness_summary(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert s["active_dims"] == 4 and abs(s["effective_dims"] - 4) < 1e-6
    s = activeness_summary(torch.tensor([1.0, 0.0, 0.01]))
    assert s["active_dims"] == 1 and s["effective_dims"] < 1.1


def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 5, generator=g, dtype=torch.float64)
    b = (
        torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
        + 1.0
    )
    fd = frechet_distance(a, b)
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert abs(fd - ref) / ref < 1e-6
    assert frechet_distance(a, a) < 1e-8
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, b[:, :3])


def test_factor_predictor_fits_and_caches(tmp_path):
    cfg = PredictorConfig(dataset="dots", n_train=2048, n_val=256, epochs=3, batch_size=32)
    model, info = load_or_fit_predictor(cfg, cache_dir=tmp_path, progress=False)
    assert info["cached"] is False and (tmp_path / cfg.key()).is_file()
    # position of the big dot is learned well beyond chance even with this tiny budget
    assert info["validation"]["x1"]["r2"] > 0.5
    again, info2 = load_or_fit_predictor(cfg, cache_dir=tmp_path, progress=False)
    assert info2["cached"] is True
    x = torch.rand(5, 1, 32, 32)
    torch.testing.assert_close(model.predict(x), again.predict(x))
    pred, feats = model.predict(x, return_features=True)
    assert pred.shape == (5, 4) and feats.shape == (5, 128)
    assert model.to_levels(pred).dtype == torch.int64


def test_mig_counts_a_constant_factor_as_zero():
    """A generator that never varies a factor has not disentangled it: it scores 0, in the mean."""
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 8, size=(2000, 2)).astype(np.float64)
    codes = factors + 0.01 * rng.standard_normal(factors.shape)
    full = mig(codes, factors)
    factors[:, 1] = 3.0
    collapsed = mig(codes, factors)
    assert collapsed["varying_factors"] == 1 and full["varying_factors"] == 2
    assert collapsed["per_factor"][1] == 0.0
    assert abs(collapsed["mig"] - full["per_factor"][0] / 2) < 1e-12


# ---------------------------------------------------------------------------------------------
# DCI over varying factors, MIG winners, MIG-sup, varying_mask


def test_varying_mask_rule():
    rng = np.random.default_rng(0)
    N = 2000
    f = np.stack(
        [
            rng.integers(0, 4, N),  # varies
            np.full(N, 2),  # constant
            np.where(np.arange(N) < 5, 1, 0),  # 5 strays of 2000 (< 1%): constant
            np.where(np.arange(N) < 20, 1, 0),  # exactly 1%: varies
            np.full(N, 0.3) + np.where(np.arange(N) < 40, 1e-3, 0.0),  # continuous, 2% off: varies
            np.full(N, 0.3) + 1e-9 * rng.normal(size=N),
        ],
        1,
    )  # continuous, negligible
    assert varying_mask(f).tolist() == [True, False, False, True, True, False]
    assert varying_mask(f, min_share=0.0).tolist()[2] is True
    with pytest.raises(ValueError, match="min_share"):
        varying_mask(f, min_share=1.5)
    with pytest.raises(ValueError, match="atol"):
        varying_mask(f, atol=-1.0)


@pytest.fixture(scope="module")
def three_factor_code():
    """3 varying continuous factors read from noisy axes of a 5-D code, and a constant one."""
    rng = np.random.default_rng(3)
    N = 1500
    v = rng.uniform(0, 1, (N, 3))
    z = np.concatenate([v + 0.05 * rng.normal(size=(N, 3)), rng.normal(size=(N, 2))], 1)
    return z, v


@pytest.mark.parametrize("model", ["gbt", "lasso"])
def test_dci_with_a_constant_factor_equals_dci_without_it(three_factor_code, model):
    z, v = three_factor_code
    with_const = np.concatenate([v[:, :1], np.full((len(v), 1), 0.5), v[:, 1:]], 1)
    ref = dci(z, v, categorical=[False] * 3, model=model)
    out = dci(z, with_const, categorical=[False] * 4, model=model)
    for key in ("disentanglement", "completeness", "informativeness"):
        assert abs(out[key] - ref[key]) < 1e-12, key
    assert out["varying_factors"] == 3 and out["constant_factors"] == [1]
    assert out["informativeness_per_factor"][1] is None
    assert np.array(out["importance"])[:, 1].tolist() == [0.0] * 5
    assert ref["varying_factors"] == 3 and ref["constant_factors"] == []
    # the old behaviour (a constant factor in the entropy base, informativeness 1.0 for free)
    # is not what comes out: forcing it "varying" is refused by the fit, not counted as 1.0
    forced = dci(z, with_const, categorical=[False] * 4, model=model, varying=[True] * 4)
    assert forced["varying_factors"] == 3 and abs(forced["disentanglement"] - ref["disentanglement"]) < 1e-12


def test_dci_one_varying_factor_counts_only_it(three_factor_code):
    z, v = three_factor_code
    f = np.concatenate([v[:, :1], np.full((len(v), 2), 3.0)], 1)
    out = dci(z, f, categorical=[False] * 3, model="lasso")
    assert out["varying_factors"] == 1 and out["constant_factors"] == [1, 2]
    single = dci(z, v[:, :1], categorical=[False], model="lasso")
    assert abs(out["informativeness"] - single["informativeness"]) < 1e-12
    assert out["informativeness"] < 0.99  # noisy: not the free 1.0 a constant factor used to add
    with pytest.raises(ValueError, match="varying"):
        dci(z, f, varying=[True, False])


def test_mig_winners_on_a_permuted_identity_code():
    rng = np.random.default_rng(5)
    N, K = 3000, 4
    levels = rng.integers(0, 8, (N, K))
    perm = [2, 0, 3, 1]  # factor j is stored in code axis perm[j]
    z = rng.normal(size=(N, 6))
    for j, p in enumerate(perm):
        z[:, p] = levels[:, j] + rng.uniform(0, 1, N)
    out = mig(z, levels)
    assert out["winner_per_factor"] == perm
    assert out["distinct_winners"] is True
    assert out["varying"] == [True] * 4 and out["varying_factors"] == 4
    # one latent that wins every factor: a code axis holding all four (a mixed radix number)
    z2 = rng.normal(size=(N, 3))
    z2[:, 1] = levels @ np.array([512.0, 64.0, 8.0, 1.0]) + rng.uniform(0, 1, N)
    out2 = mig(z2, levels, n_bins=20)
    assert out2["winner_per_factor"] == [1, 1, 1, 1]
    assert out2["distinct_winners"] is False
    # a constant factor has no winner and does not break distinctness
    lv = levels.copy()
    lv[:, 3] = 0
    out3 = mig(z, lv)
    assert out3["winner_per_factor"] == perm[:3] + [None] and out3["distinct_winners"] is True


def test_mig_sup_known_values():
    """Codes that copy discrete factors on a balanced grid (every combination equally often), so
    the empirical mutual informations are exact: normalized MIs are exactly 0, 1/2 or 1."""
    i = np.arange(4 * 4 * 4 * 4 * 16)
    a, b, c, e = i % 4, (i // 4) % 4, (i // 16) % 4, (i // 64) % 4
    f = np.stack([a, b], 1)
    # each factor on its own axis, plus 2 unused (independent) axes: gaps 1, 1, 0, 0 -> 2/4
    z = np.stack([a, b, c, e], 1).astype(float)
    out = mig_sup(z, f)
    assert out["per_latent"] == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-12)
    assert out["mig_sup"] == pytest.approx(0.5, abs=1e-12) and out["varying_factors"] == 2
    assert mig(z, f)["mig_sup"] == pytest.approx(out["mig_sup"], abs=1e-15)
    # one axis carrying both factors (4 a + b, 16 levels): I(z; a)/H(a) = I(z; b)/H(b) = 1 -> gap 0,
    # while the MIG of each factor is 1 (the other axis is independent): MIG cannot see it
    z2 = np.stack([4 * a + b, c], 1).astype(float)
    out2 = mig_sup(z2, f)
    assert out2["per_latent"] == pytest.approx([0.0, 0.0], abs=1e-12)
    m2 = mig(z2, f)
    assert m2["mig"] == pytest.approx(1.0, abs=1e-12) and m2["distinct_winners"] is False
    # an axis that stores a exactly and half of b (b // 2): gap = 1 - H(b // 2) / H(b) = 1 - ln 2 / ln 4
    z3 = np.stack([4 * a + b // 2, b], 1).astype(float)
    out3 = mig_sup(z3, f)
    assert out3["per_latent"] == pytest.approx([0.5, 1.0], abs=1e-12)
    # a constant factor is left out: same answer as without it
    f_c = np.stack([a, np.zeros_like(a), b], 1)
    assert mig_sup(z3, f_c)["per_latent"] == pytest.approx(out3["per_latent"], abs=1e-15)
    with pytest.raises(ValueError, match="same number of rows"):
        mig_sup(z, f[:10])
    with pytest.raises(ValueError, match="varying"):
        mig_sup(z, f, varying=[True])
    with pytest.raises(ValueError, match="n_bins"):
        mig_sup(z, f, n_bins=1)


# ---------------------------------------------------------------------------------------------
# axis alignment


def _linear(A: torch.Tensor):
    return lambda z: z.to(A.dtype) @ A.T  # (N, d) -> (N, m)


def test_axis_alignment_is_one_on_axes_and_reads_the_spectrum():
    """G(z) = A diag(s) P z, A with orthonormal columns, P a permutation: v_i = P^T e_i exactly."""
    g = torch.Generator().manual_seed(0)
    d, m = 6, 20
    A, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
    s = torch.tensor([6.0, 3.0, 2.4, 1.2, 0.6, 0.3], dtype=torch.float64)
    perm = [4, 1, 5, 0, 2, 3]
    P = torch.eye(d, dtype=torch.float64)[perm]
    G = _linear(A @ torch.diag(s) @ P)
    z = torch.randn(5, d, generator=g, dtype=torch.float64)
    out = axis_alignment(G, z, 4)
    assert out["per_index"] == pytest.approx([1.0] * 4, abs=1e-10)
    assert out["axis"] == perm[:4] and out["axis_share"] == [1.0] * 4 and out["distinct_axes"] is True
    assert out["sigma_ratios"] == pytest.approx((s[1:4] / s[:3]).tolist(), abs=1e-10)
    assert out["sigma"] == pytest.approx(s[:4].tolist(), abs=1e-10)
    assert out["k"] == 4 and out["d"] == d and out["samples"] == 5
    # power iteration run to convergence gives the same answer
    pw = axis_alignment(G, z, 4, method="power", iters=300, tol=1e-9)
    assert pw["per_index"] == pytest.approx([1.0] * 4, abs=1e-6) and pw["axis"] == perm[:4]


def test_axis_alignment_of_a_rotated_map_is_known_and_near_chance():
    """G(z) = A diag(s) R z: v_i = R^T e_i, so index i scores exactly max_j R_ij^2; over many
    random rotations the mean is E max_j v_j^2 of a random unit vector (chance_alignment)."""
    g = torch.Generator().manual_seed(1)
    d, m = 8, 24
    A, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
    s = torch.linspace(4.0, 1.0, d, dtype=torch.float64)
    z = torch.randn(3, d, generator=g, dtype=torch.float64)
    scores = []
    for _ in range(40):
        R, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        out = axis_alignment(_linear(A @ torch.diag(s) @ R), z, d)
        expected = R.pow(2).max(dim=1).values
        assert out["per_index"] == pytest.approx(expected.tolist(), abs=1e-9)
        assert out["axis"] == R.pow(2).argmax(dim=1).tolist()
        scores += out["per_index"]
    chance = chance_alignment(d)
    # E max_j v_j^2 for d = 8 lies between 1/d and 1; 320 draws, sd ~0.13: standard error ~0.008
    assert 1.0 / d < chance < 0.5
    assert abs(float(np.mean(scores)) - chance) < 0.03
    assert out["chance"] == chance


def test_chance_alignment_limits():
    assert chance_alignment(1) == pytest.approx(1.0)
    # d = 2: v = (cos t, sin t), E max(cos^2, sin^2) = 1/2 + 1/pi
    assert chance_alignment(2) == pytest.approx(0.5 + 1 / np.pi, abs=2e-3)
    with pytest.raises(ValueError, match="d must be"):
        chance_alignment(0)


def test_axis_alignment_bad_input():
    G = _linear(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="z must be"):
        axis_alignment(G, torch.zeros(3), 1)
    with pytest.raises(ValueError, match="k must be"):
        axis_alignment(G, torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="k must be"):
        axis_alignment(G, torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="method"):
        axis_alignment(G, torch.zeros(2, 3), 1, method="svd")


# ---------------------------------------------------------------------------------------------
# reference generators (ceiling and floor), evaluate_generator's new keys, format_table


def test_oracle_generator_maps_z_i_to_factor_i():
    from spectral_ops.lab.data import Dots, Sprites

    G = oracle_generator("sprites", 7, 32)
    assert G.latent_dim == 7 and isinstance(G, torch.nn.Module) and G.piecewise_constant
    levels = torch.tensor([[0, 5, 39, 0, 31], [3, 2, 17, 30, 1], [1, 0, 0, 12, 12]])
    sizes = torch.tensor(Sprites.factor_sizes, dtype=torch.float64)
    z = torch.special.ndtri((levels.double() + 0.5) / sizes)  # the middle of each level's interval
    z = torch.cat([z, torch.randn(3, 2, dtype=torch.float64)], 1).float()
    assert torch.equal(G.factors(z), levels)
    ref = Sprites(1, size=32).render(levels)
    assert torch.equal(G(z), ref)
    z2 = z.clone()
    z2[:, 5:] = torch.randn(3, 2) * 10  # extra latent dims are ignored
    assert torch.equal(G(z2), ref)
    # extreme latents stay in range
    assert G.factors(torch.tensor([[-1e6] * 7, [1e6] * 7])).tolist() == [[0] * 5, [s - 1 for s in Sprites.factor_sizes]]
    # with z ~ N(0, I) the levels are uniform, like the dataset's
    lv = oracle_generator("dots", 4).factors(torch.randn(16000, 4, generator=torch.Generator().manual_seed(0)))
    counts = torch.stack([torch.bincount(lv[:, j], minlength=16) for j in range(4)]).double()
    assert ((counts - 1000).abs() < 5 * 1000**0.5).all()
    assert Dots.factor_sizes == (16,) * 4


def test_rotated_oracle_is_the_oracle_of_R_z():
    Gr = oracle_generator("dots", 6, rotated=True, seed=3)
    G = oracle_generator("dots", 6)
    R = Gr.rotation
    assert torch.allclose(R @ R.T, torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert (R.abs() > 0.05).sum() > 18  # not close to a permutation
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(Gr(z), G(z @ R.T))
    z2 = z.clone()
    z2[:, 5] += 1.0  # every latent dim, even beyond the factors, moves the rotated oracle
    assert not torch.equal(Gr.factors(z2), Gr.factors(z))
    assert torch.equal(oracle_generator("dots", 6, rotated=True, seed=3).rotation, R)  # fixed by its seed


def test_entangling_rotation_spreads_every_factor_row():
    from spectral_ops.lab.metrics.reference_generators import entangling_rotation

    Q = entangling_rotation(10, 4, seed=2)
    assert torch.allclose(Q.T @ Q, torch.eye(10, dtype=torch.float64), atol=1e-12)
    assert torch.equal(Q, entangling_rotation(10, 4, seed=2))
    # the first candidate is a plain Haar draw from the same seed: the pick is never worse
    first = entangling_rotation(10, 4, seed=2, candidates=1)
    assert float(Q[:4].pow(2).max()) <= float(first[:4].pow(2).max())
    # every factor row is spread: well below a random direction's E max_j v_j^2 (0.38 for d = 10)
    assert float(Q[:4].pow(2).max()) < chance_alignment(10)


def test_oracle_generator_bad_input():
    with pytest.raises(ValueError, match="dataset"):
        oracle_generator("faces", 8)
    with pytest.raises(ValueError, match="latent_dim"):
        oracle_generator("sprites", 4)  # sprites has 5 factors
    with pytest.raises(ValueError, match="size"):
        oracle_generator("dots", 8, 48)
    with pytest.raises(ValueError, match="z must be"):
        oracle_generator("dots", 8).factors(torch.zeros(3, 5))


@pytest.fixture(scope="module")
def dots_predictor(tmp_path_factory):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = PredictorConfig(dataset="dots", n_train=2048, n_val=256, epochs=3, batch_size=32)
    model, _ = load_or_fit_predictor(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    torch.set_num_threads(prev)
    return model


@pytest.fixture(scope="module")
def dots_reference(dots_predictor):
    from spectral_ops.lab.evaluate import reference_rows

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = reference_rows("dots", 32, 6, dots_predictor, n=600, seed=0)
    torch.set_num_threads(prev)
    return rows


def test_reference_rows_ceiling_far_above_floor(dots_reference):
    from spectral_ops.lab.evaluate import CEILING, FLOOR

    assert list(dots_reference) == [CEILING, FLOOR] == ["ceiling (oracle)", "floor (rotated oracle)"]
    top, bottom = dots_reference[CEILING], dots_reference[FLOOR]
    # measured (n=600, seeds 0-2): MIG 0.39-0.41 vs 0.015-0.022; MIG-sup 0.26-0.27 vs 0.014-0.026;
    # DCI D 0.90 vs 0.20-0.29; DCI C 0.91 vs 0.22-0.25
    assert top["mig"] > 0.3 and bottom["mig"] < 0.1 and top["mig"] - bottom["mig"] > 0.25
    assert top["mig_sup"] > 0.2 and bottom["mig_sup"] < 0.1
    assert top["dci_disentanglement"] > 0.8 and bottom["dci_disentanglement"] < 0.45
    assert top["dci_completeness"] > 0.8 and bottom["dci_completeness"] < 0.45
    # the oracle's winners are its own axes, one per factor
    assert top["mig_winner_per_factor"] == {"x1": 0, "y1": 1, "x2": 2, "y2": 3}
    assert top["mig_distinct_winners"] is True
    for r in (top, bottom):
        assert r["varying_factors"] == 4 and r["constant_factors"] == [] and r["num_factors"] == 4
        assert isinstance(r["axis_alignment"], str) and r["axis_alignment"].startswith("n/a")
    assert top["activeness"]["active_dims"] == 4 and bottom["activeness"]["active_dims"] == 6


def test_frechet_ratio_is_about_one_for_real_images(dots_reference):
    """Both oracles render exactly the data distribution: their Frechet distance is a
    real-vs-real distance, so the ratio is 1 up to sampling noise (measured 0.70-1.31 here; at
    n=2000 on sprites and dots, 0.61-2.21 over two seeds: the estimate is noisy)."""
    for r in dots_reference.values():
        assert r["frechet_real"] > 0
        assert r["frechet_ratio"] == pytest.approx(r["frechet_distance"] / r["frechet_real"], rel=1e-12)
        assert 0.4 < r["frechet_ratio"] < 2.5
    # the same real sets for both: the real-vs-real distance does not depend on the generator
    a, b = dots_reference.values()
    assert a["frechet_real"] == b["frechet_real"]


class _Blank(torch.nn.Module):
    latent_dim = 5

    def forward(self, z):
        return z[:, :1, None, None].expand(-1, 1, 32, 32) * 0.0


class _Linear(torch.nn.Module):
    """A smooth generator whose image depends on z0 and z1 only (a ramp and a brightness)."""

    latent_dim = 5

    def forward(self, z):
        u = torch.linspace(0, 1, 32)
        img = 0.5 + 0.1 * z[:, 0, None, None] * u[None, None, :] + 0.05 * z[:, 1, None, None]
        return img.expand(-1, 32, 32)[:, None]


def test_evaluate_generator_new_keys_on_smooth_and_blank_generators(dots_predictor):
    from spectral_ops.lab.evaluate import evaluate_generator

    blank = evaluate_generator(_Blank(), dataset="dots", size=32, predictor=dots_predictor, n=300, seed=0)
    assert blank["frechet_ratio"] > 20  # an image set the predictor has never seen
    assert blank["varying_factors"] == 0 and blank["constant_factors"] == ["x1", "y1", "x2", "y2"]
    assert blank["dci_disentanglement"] == 0.0 and blank["dci_informativeness"] == 0.0
    assert blank["mig"] == 0.0 and blank["mig_winner_per_factor"] == dict.fromkeys(["x1", "y1", "x2", "y2"])
    lin = evaluate_generator(
        _Linear(), dataset="dots", size=32, predictor=dots_predictor, n=300, seed=0, n_align=8, align_k=2
    )
    a = lin["axis_alignment"]
    # rank-2 Jacobian spanned by e0 and e1 (columns 0.1 u and 0.05 * ones: not orthogonal, so the
    # singular vectors mix the two axes by a known amount)
    J = torch.stack([0.1 * torch.linspace(0, 1, 32).repeat(32), torch.full((1024,), 0.05)], 1).double()
    _, sv, Vt = torch.linalg.svd(J, full_matrices=False)
    assert a["per_index"] == pytest.approx(Vt.pow(2).max(1).values.tolist(), abs=1e-5)
    assert a["sigma_ratios"] == pytest.approx([float(sv[1] / sv[0])], abs=1e-5)
    assert sorted(a["axis"]) == [0, 1]
    for key in (
        "mig",
        "mig_per_factor",
        "varying_factors",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "dci_informativeness_per_factor",
        "activeness",
        "frechet_distance",
        "factor_names",
        "n",
        "seconds",
        "mig_sup",
        "mig_winner_per_factor",
        "mig_distinct_winners",
        "frechet_real",
        "frechet_ratio",
        "axis_alignment",
        "constant_factors",
    ):
        assert key in lin
    with pytest.raises(ValueError, match="n_align"):
        evaluate_generator(_Linear(), dataset="dots", size=32, predictor=dots_predictor, n=300, n_align=-1)
    with pytest.raises(ValueError, match="latent_dim"):
        evaluate_generator(lambda z: z, dataset="dots", size=32, predictor=dots_predictor, n=300)


def test_format_table_any_columns_and_na(dots_reference):
    from spectral_ops.lab.evaluate import format_table

    model = dict(dots_reference["ceiling (oracle)"])
    model["axis_alignment"] = {
        "per_index": [0.9, 0.5],
        "axis": [3, 1],
        "mean": 0.7,
        "distinct_axes": True,
        "chance": 0.4,
        "sigma_ratios": [0.25],
        "k": 2,
    }
    model["train_seconds"] = 12.0
    old_style = {"mig": 0.1, "mig_per_factor": {"x1": 0.2}, "factor_names": ["x1"]}  # an older result
    table = format_table({"spectral": model, **dots_reference, "old": old_style})
    lines = table.splitlines()
    assert "spectral" in lines[0] and "ceiling (oracle)" in lines[0] and "floor (rotated oracle)" in lines[0]
    row = {re.split(r"\s{2,}", ln.strip())[0]: ln for ln in lines[2:]}
    assert row["MIG x1 (winning latent)"].count(f"{model['mig_per_factor']['x1']:.3f} (z0)") == 2
    assert row["MIG x1 (winning latent)"].rstrip().endswith("0.200")  # old result: no winner key
    assert "yes" in row["distinct latents"] and row["distinct latents"].rstrip().endswith("n/a")
    assert "4/4" in row["varying factors"]
    assert "0.900 (z3)" in row["v1: max_j v_j^2 (axis)"] and "0.500 (z1)" in row["v2: max_j v_j^2 (axis)"]
    assert row["v1: max_j v_j^2 (axis)"].count("n/a") == 3  # oracles and the old result
    assert "0.250" in row["sigma2/sigma1"]
    assert "12.0" in row["train time (s)"] and row["train time (s)"].count("n/a") == 3
    assert "MIG-sup (higher better)" in row and "Frechet ratio (x real-vs-real)" in row
    assert "Frechet real vs real" in row
    assert all(len(ln) == len(lines[0]) for ln in lines[2:])
    with pytest.raises(ValueError, match="results"):
        format_table({})


def test_int_and_seed_arguments_use_the_library_checks(codes):
    """A non-integer count, size or seed is a TypeError naming the argument, as in the library's
    checks (spectral_ops.validation); a value out of range stays a ValueError.  Before: ValueError
    for both."""
    from spectral_ops.lab.metrics.trajectory import resample_by_output_length

    z, _, levels = codes
    G = oracle_generator("dots", 4)
    cases = [
        (lambda: mig(z, levels, n_bins=2.5), TypeError, "n_bins must be an int, got float"),
        (lambda: mig_sup(z, levels, n_bins=True), TypeError, "n_bins must be an int, got bool"),
        (lambda: mig(z, levels, n_bins=1), ValueError, "n_bins must be an int >= 2, got 1"),
        (lambda: chance_alignment(2.0), TypeError, "d must be an int, got float"),
        (lambda: chance_alignment(0), ValueError, "d must be an int >= 1, got 0"),
        (lambda: axis_alignment(G, torch.zeros(2, 4), 1.0), TypeError, "k must be an int, got float"),
        (lambda: axis_alignment(G, torch.zeros(2, 4), 5), ValueError, "k must be an int with 1 <= k <= d=4"),
        (lambda: oracle_generator("dots", 6.0), TypeError, "latent_dim must be an int, got float"),
        (lambda: oracle_generator("dots", 3), ValueError, "latent_dim must be an int >= the number of factors"),
        (lambda: oracle_generator("dots", 6, seed=0.5), TypeError, "seed must be an int, got float"),
        (lambda: oracle_generator("dots", 6, seed=-(2**63) - 1), ValueError, "seed must be an int in"),
        (lambda: resample_by_output_length(G, torch.zeros(3, 1, 4), 1.0, 2.0), TypeError, "n must be an int, got"),
        (lambda: resample_by_output_length(G, torch.zeros(3, 1, 4), 1.0, 1), ValueError, "n must be an int >= 2"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
