"""Traversal pictures: pixel values, grid layout, the latents behind every row, bad input."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from spectral_ops.lab import viz


def linear_G(d=5, m=16, seed=0):
    """G(z) = A z with A = U diag(s) V^T known; outputs are 16-vectors (drawn as 4x4 squares)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)[:d]
    A = U @ torch.diag(s) @ V.T
    return (lambda z: z @ A.T), V.T  # rows of V.T are the right-singular vectors


def image_G(z):
    """(N, d) -> (N, 3, 6, 6): a smooth image generator for layout checks."""
    x = torch.linspace(-1, 1, 6, dtype=z.dtype)
    base = x[None, :, None] * z[:, :1, None] + x[None, None, :] * z[:, 1:2, None]
    return torch.tanh(torch.stack([base, base * 0.5, -base], dim=1) + z[:, 2:3, None, None])


def test_to_images_exact_pixels_for_unit_range_and_tanh_range():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    img = viz.to_images(x)[0]
    assert img.size == (2, 2) and img.mode == "RGB"
    assert np.asarray(img)[:, :, 0].tolist() == [[0, 255], [128, 64]]
    y = torch.tensor([[[[-1.0, 1.0], [0.0, -0.5]]]])
    assert np.asarray(viz.to_images(y)[0])[:, :, 1].tolist() == [[0, 255], [128, 64]]
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[0, 2] = 1.0
    assert np.asarray(viz.to_images(rgb)[0])[0, 0].tolist() == [0, 0, 255]
    wide = torch.tensor([[[[0.0, 10.0]]]])  # out of both ranges: min..max
    assert np.asarray(viz.to_images(wide)[0])[0, :, 0].tolist() == [0, 255]
    nan = torch.tensor([[[[float("nan"), 1.0]]]])
    assert np.asarray(viz.to_images(nan)[0])[0, :, 0].tolist() == [0, 255]


def test_vectors_square_or_line_plot():
    sq = viz.to_images(torch.linspace(0, 1, 9).reshape(1, 9))[0]
    assert sq.size == (3, 3)
    assert np.asarray(sq)[2, 2, 0] == 255 and np.asarray(sq)[0, 0, 0] == 0
    plots = viz.to_images(torch.randn(2, 7))
    assert [p.size for p in plots] == [viz.PLOT_TILE] * 2
    arr = np.asarray(plots[0])
    assert (arr != 255).any()  # something was drawn
    assert not np.array_equal(arr, np.asarray(plots[1]))


def test_grid_layout_places_tiles():
    rows = torch.zeros(2, 3, 1, 4, 4)
    rows[1, 2] = 1.0  # the last tile of the second row is white, the rest black
    img = viz.make_grid(rows, pad=2, scale=2)
    assert img.size == (3 * (8 + 2) + 2, 2 * (8 + 2) + 2)
    a = np.asarray(img)[:, :, 0]
    assert a[2 + 10 + 3, 2 + 20 + 3] == 255  # inside row 1, column 2
    assert a[2 + 3, 2 + 20 + 3] == 0  # inside row 0, column 2
    assert a[0, 0] == 255  # padding is white
    labelled = viz.make_grid(rows, row_labels=["a", "bb"])
    assert labelled.size[0] > viz.make_grid(rows).size[0]


def test_coordinate_traversal_latents_and_centre():
    G, _ = linear_G()
    z0 = torch.randn(5, dtype=torch.float64)
    out, Z = viz.coordinate_traversal(G, z0, [0, 3], span=1.5, n=5)
    assert out.shape == (2, 5, 16) and Z.shape == (2, 5, 5)
    assert torch.allclose(Z[1, :, 3] - z0[3], torch.linspace(-1.5, 1.5, 5, dtype=torch.float64))
    assert torch.equal(torch.cat([Z[1, :, :3], Z[1, :, 4:]], 1), torch.cat([z0[:3], z0[4:]]).expand(5, 4))
    assert torch.allclose(out[0, 2], G(z0[None])[0])


def test_line_traversal_follows_singular_vectors():
    G, Vt = linear_G()
    z0 = torch.randn(5, dtype=torch.float64)
    out, Z = viz.line_traversal(G, z0, [0, 2], span=1.0, n=3, method="dense")
    for row, i in enumerate([0, 2]):
        step = Z[row, 2] - Z[row, 1]
        assert abs(abs(float(step @ Vt[i])) - 1.0) < 1e-10
    assert torch.allclose(out, G(Z.reshape(-1, 5)).reshape(2, 3, 16))


def test_trajectory_traversal_on_the_analytic_circle():
    """On G = (r, 3 u / r) in 2-D the top trajectory is the circle through z0 (see
    test_trajectory.py): every column lies on it, z0 in the middle, arc length span each way."""

    def G(z):
        r = z.norm(dim=-1, keepdim=True)
        return torch.cat([r, 3 * z / r], dim=-1)

    z0 = torch.tensor([0.6, 0.8], dtype=torch.float64)
    out, Z, trajs = viz.trajectory_traversal(G, z0, [0], span=1.0, n=5, steps=20, topk_method="dense")
    assert out.shape == (1, 5, 3) and len(trajs) == 1
    assert torch.allclose(Z[0].norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-7)
    assert torch.equal(Z[0, 2], z0)
    ang = torch.atan2(Z[0, :, 1], Z[0, :, 0])
    assert torch.allclose((ang[1:] - ang[:-1]).abs(), torch.full((4,), 0.5, dtype=torch.float64), atol=1e-7)


def test_image_generator_end_to_end_png(tmp_path):
    z0 = torch.tensor([0.3, -0.2, 0.1, 0.0])
    rows, _ = viz.coordinate_traversal(image_G, z0, [0, 1, 2], n=4)
    img = viz.save_grid(rows, tmp_path / "sub" / "coords.png", row_labels=["z0", "z1", "z2"], scale=3)
    back = Image.open(tmp_path / "sub" / "coords.png")
    assert back.size == img.size and back.format == "PNG"
    _, _, trajs = viz.trajectory_traversal(image_G, z0, [0, 1], span=0.5, n=3, steps=2, topk_method="power", iters=5)
    p = viz.plot_singular_values(trajs[1], tmp_path / "sv.png")
    assert Image.open(p).format == "PNG"


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda G: viz.coordinate_traversal(G, torch.zeros(5), [5]), "dims"),
        (lambda G: viz.coordinate_traversal(G, torch.zeros(5), []), "dims"),
        (lambda G: viz.coordinate_traversal(G, torch.zeros(2, 5), [0]), "z0"),
        (lambda G: viz.coordinate_traversal(G, torch.zeros(5), [0], n=1), "n"),
        (lambda G: viz.coordinate_traversal(G, torch.zeros(5), [0], span=-1.0), "span"),
        (lambda G: viz.line_traversal(G, torch.zeros(5), [7]), "directions"),
        (lambda G: viz.trajectory_traversal(G, torch.ones(5), [0], steps=0), "steps"),
        (lambda G: viz.make_grid(torch.zeros(2, 2, 4), row_labels=["a"]), "row_labels"),
        (lambda G: viz.make_grid(torch.zeros(2, 2, 4), scale=0), "scale"),
        (lambda G: viz.to_images(torch.zeros(1, 1, 1, 2), value_range=(1, 1)), "value_range"),
        (lambda G: viz.to_images(torch.zeros(2)), "outputs"),
    ],
)
def test_bad_input(call, word):
    G, _ = linear_G()
    with pytest.raises(ValueError, match=word):
        call(lambda z: G(z.double()))


def test_typical_latent_is_seeded_and_has_the_typical_norm():
    z = viz.typical_latent(10, seed=3)
    assert z.shape == (1, 10) and z.dtype == torch.float32
    assert abs(float(z.norm()) - 10**0.5) < 1e-5
    assert torch.equal(z, viz.typical_latent(10, seed=3))
    assert not torch.equal(z, viz.typical_latent(10, seed=4))
    assert viz.typical_latent(4, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="d must be"):
        viz.typical_latent(0)
    with pytest.raises(ValueError, match="seed"):
        viz.typical_latent(3, seed=1.5)


def test_traversal_grid_defaults_to_a_typical_latent():
    """The middle column of the default grid is G(z0) with ||z0|| = sqrt(d), not z = 0."""
    from spectral_ops.lab.evaluate import traversal_grid

    seen = []

    class G(torch.nn.Module):
        latent_dim = 6

        def forward(self, z):
            seen.append(z.clone())
            return torch.sigmoid(z[:, :1, None, None].expand(-1, 1, 4, 4))

    img = traversal_grid(G(), n=5, scale=1)
    Z = torch.cat(seen).reshape(6, 5, 6)
    mid = Z[:, 2]
    assert torch.allclose(mid, viz.typical_latent(6).expand(6, 6))
    assert abs(float(mid[0].norm()) - 6**0.5) < 1e-5
    assert img.size[1] == 6 * (4 + 2) + 2
    seen.clear()
    traversal_grid(G(), n=5, scale=1, seed=1)
    assert torch.allclose(torch.cat(seen).reshape(6, 5, 6)[:, 2], viz.typical_latent(6, seed=1).expand(6, 6))
