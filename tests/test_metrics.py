"""MIG / DCI against codes with a known answer; activeness, Frechet distance, factor predictor."""
import numpy as np
import pytest
import torch

from spectral_ops.metrics import (PredictorConfig, activeness, activeness_summary, dci, discretize,
                                  frechet_distance, load_or_fit_predictor, mig)


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
    G = lambda z: z @ A  # noqa: E731  z (N, 3) -> (N, 4)
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
    b = torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 1.0
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
