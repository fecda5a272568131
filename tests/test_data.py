"""Procedural datasets render the factors they claim, deterministically."""

import math

import pytest
import torch

from spectral_ops.lab.data import DATASETS, Dots, Spot, Sprites, make_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def _centroid(img):
    """img (S, S) -> (x, y) centroid in pixels."""
    w = img.double()
    cx = torch.arange(w.shape[1], dtype=torch.float64) + 0.5
    cy = torch.arange(w.shape[0], dtype=torch.float64) + 0.5
    return float((w.sum(0) * cx).sum() / w.sum()), float((w.sum(1) * cy).sum() / w.sum())


def test_shapes_ranges_and_determinism():
    a, b, c = Sprites(300, seed=3), Sprites(300, seed=3), Sprites(300, seed=4)
    assert a.images.shape == (300, 1, 32, 32) and a.images.dtype == torch.float32
    assert a.factors.shape == (300, 5) and a.factors.dtype == torch.int64
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)
    assert a.images.min() >= 0 and a.images.max() <= 1
    for j, n in enumerate(a.factor_sizes):
        assert a.factors[:, j].min() >= 0 and a.factors[:, j].max() < n
    img, f = a[7]
    assert img.shape == (1, 32, 32) and torch.equal(f, a.factors[7])
    # anti-aliased: edge pixels take intermediate values
    assert ((a.images > 0.05) & (a.images < 0.95)).any()
    assert a.factor_sizes == (4, 6, 40, 32, 32)


def test_position_factors_move_centroid_monotonically():
    s = Sprites(1)
    for shape in range(4):
        fx = torch.tensor([[shape, 3, 7, x, 10] for x in range(32)])
        fy = torch.tensor([[shape, 3, 7, 20, y] for y in range(32)])
        cx = [_centroid(im[0])[0] for im in s.render(fx)]
        cy = [_centroid(im[0])[1] for im in s.render(fy)]
        assert all(b > a + 0.2 for a, b in zip(cx, cx[1:])), cx
        assert all(b > a + 0.2 for a, b in zip(cy, cy[1:])), cy
        # the other coordinate stays put
        ys = [_centroid(im[0])[1] for im in s.render(fx)]
        assert max(ys) - min(ys) < 0.05  # sub-pixel aliasing only


def test_scale_grows_area_and_areas_match_geometry():
    s = Sprites(1)
    for shape in range(4):
        f = torch.tensor([[shape, sc, 0, 16, 16] for sc in range(6)])
        area = s.render(f).sum((1, 2, 3))
        assert torch.all(area[1:] > area[:-1] * 1.1), area
    full = s.render(torch.tensor([[0, 5, 0, 16, 16], [1, 5, 0, 16, 16]])).sum((1, 2, 3))
    side = 2 * 0.75 * Sprites.radius * 32  # square of half-side 0.75 radius
    assert abs(full[0] - side**2) / side**2 < 0.02
    ellipse = math.pi * 1.0 * 0.6 * (Sprites.radius * 32) ** 2
    assert abs(full[1] - ellipse) / ellipse < 0.02
    # 64x64 renders the same geometry with 4x the pixels
    big = Sprites(1, size=64).render(torch.tensor([[0, 5, 0, 16, 16]])).sum()
    assert abs(big / full[0] - 4) < 0.1


def test_shapes_differ_and_rotation_symmetries():
    s = Sprites(1)
    f = torch.tensor([[shape, 5, 0, 16, 16] for shape in range(4)])
    im = s.render(f)[:, 0]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (im[i] - im[j]).abs().sum() > 8, (i, j)
    # 10 of 40 rotation levels = 90 degrees: a square maps onto itself, a heart does not
    rot = s.render(torch.tensor([[0, 5, 10, 16, 16], [2, 5, 10, 16, 16]]))[:, 0]
    assert (rot[0] - im[0]).abs().max() < 1e-4
    assert (rot[1] - im[2]).abs().sum() > 8
    # rotation preserves area
    assert abs(rot[1].sum() - im[2].sum()) / im[2].sum() < 0.03


def test_dots_dataset():
    d = Dots(50, seed=1)
    assert d.images.shape == (50, 1, 32, 32) and d.factors.shape == (50, 4)
    s = Dots(1)
    f = torch.tensor([[x, 0, 15 - x, 15] for x in range(16)])
    imgs = s.render(f)
    # big dot in the top half moves right, small dot in the bottom half moves left
    cx = [_centroid(im[0, :16])[0] for im in imgs]
    cx2 = [-_centroid(im[0, 16:])[0] for im in imgs]
    assert all(b > a for a, b in zip(cx2, cx2[1:])), cx2
    assert all(b > a for a, b in zip(cx, cx[1:])), cx
    assert torch.equal(Dots(20, seed=2).images, Dots(20, seed=2).images)


@pytest.mark.parametrize("size", [32, 64])
def test_spot_shapes_ranges_and_determinism(size):
    a, b, c = Spot(400, size=size, seed=3), Spot(400, size=size, seed=3), Spot(400, size=size, seed=4)
    assert a.images.shape == (400, 1, size, size) and a.images.dtype == torch.float32
    assert a.factors.shape == (400, 4) and a.factors.dtype == torch.int64
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)
    assert a.images.min() >= 0 and a.images.max() <= 1
    for j, n in enumerate(a.factor_sizes):
        assert a.factors[:, j].min() == 0 and a.factors[:, j].max() == n - 1  # every level drawn
    assert a.factor_names == ("x", "y", "radius", "brightness") and not any(a.categorical)
    assert Spot.measured() == a.factor_names
    # one object per image: the disc never touches the border
    assert a.images[:, :, 0].max() == 0 and a.images[:, :, -1].max() == 0
    assert a.images[:, :, :, 0].max() == 0 and a.images[:, :, :, -1].max() == 0


def test_spot_each_factor_changes_the_image():
    s = Spot(1)
    S = s.size
    # x and y move the centroid monotonically, over their own ranges (x's is twice y's)
    imgs = s.render(torch.tensor([[x, 7, 4, 4] for x in range(16)]))
    cx = [_centroid(im[0])[0] for im in imgs]
    assert all(b > a for a, b in zip(cx, cx[1:])), cx
    assert cx[0] == pytest.approx(0.22 * S, abs=0.05) and cx[-1] == pytest.approx(0.78 * S, abs=0.05)
    imgs = s.render(torch.tensor([[7, y, 4, 4] for y in range(16)]))
    cy = [_centroid(im[0])[1] for im in imgs]
    assert all(b > a for a, b in zip(cy, cy[1:])), cy
    assert cy[0] == pytest.approx(0.36 * S, abs=0.05) and cy[-1] == pytest.approx(0.64 * S, abs=0.05)
    # radius grows the area (= pi r^2 at full brightness), brightness scales the peak, not the area
    imgs = s.render(torch.tensor([[7, 7, r, 7] for r in range(8)]))
    area = imgs.flatten(1).sum(1)
    radius = torch.linspace(0.07, 0.16, 8) * S
    torch.testing.assert_close(area, math.pi * radius**2, rtol=0.03, atol=0)
    imgs = s.render(torch.tensor([[7, 7, 4, b] for b in range(8)]))
    peak = imgs.flatten(1).max(1).values
    torch.testing.assert_close(peak, torch.linspace(0.35, 1.0, 8))
    support = (imgs > 0).flatten(1).sum(1)
    assert (support == support[0]).all()


def test_spot_factor_sensitivities_are_distinct():
    sens = Spot(1).sensitivities()
    assert sens.shape == (4,)
    # x > y > radius > brightness, each at least 1.5x the next: no two share a singular value
    assert all(a > 1.5 * b for a, b in zip(sens.tolist(), sens[1:].tolist())), sens


def test_factor_values_and_registry():
    s = Sprites(10, seed=0)
    v = s.factor_values()
    assert v.shape == (10, 5) and v.min() >= 0 and v.max() <= 1
    assert set(DATASETS) == {"sprites", "dots", "spot"}
    assert make_dataset("dots", 5).factors.shape == (5, 4)
    assert make_dataset("spot", 5).factors.shape == (5, 4)
    assert Sprites.measured() == ("shape", "scale", "x", "y")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"size": 48}, ValueError, "size"),
        ({"n": 0}, ValueError, "n must be an int >= 1, got 0"),
        # a seed that is not an int is a TypeError, as in the library's checks (before: ValueError)
        ({"seed": 1.5}, TypeError, "seed must be an int, got float"),
        ({"seed": True}, TypeError, "seed must be an int, got bool"),
        ({"seed": 2**64}, ValueError, r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\]"),
        ({"n": 2.0}, TypeError, "n must be an int, got float"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    kw = {"n": 4, **kwargs}
    with pytest.raises(exc, match=match):
        Sprites(kw.pop("n"), **kw)


def test_bad_factors_and_name():
    s = Sprites(1)
    with pytest.raises(ValueError, match="out of range"):
        s.render(torch.tensor([[4, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="factors"):
        s.render(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dataset"):
        make_dataset("mnist", 3)
