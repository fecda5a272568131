"""`spectral-ops eval`: measure how disentangled a trained generator is.

For N latent samples z ~ N(0, I): generate images, read their factors with the factor predictor
(fitted once on labelled procedural images and cached; it never sees the GAN), then compute
MIG (with the latent that wins each factor), MIG-sup and DCI (over the factors that vary)
between z and the predicted factors, per-dimension activeness (E ||J e_i||), the axis alignment of
the Jacobian's leading right-singular vectors, and a Frechet distance between the predictor's
features of real and generated images (lower is better), also as a multiple of the real-vs-real
distance on the same features. `reference_rows` runs the same evaluation on the pipeline's own
ceiling (an oracle generator z_i -> factor i) and floor (the rotated oracle). Also draws a
traversal grid: one row per latent dimension.
"""

from __future__ import annotations

import time

import torch
from PIL import Image, ImageDraw

from spectral_ops.lab.data import DATASETS, make_dataset
from spectral_ops.lab.viz import generate
from spectral_ops.lab.metrics import (
    activeness,
    activeness_summary,
    axis_alignment,
    dci,
    frechet_distance,
    mig,
    oracle_generator,
    varying_mask,
)
from spectral_ops.jacobian import name_rows
from spectral_ops.validation import check_int

__all__ = [
    "evaluate_generator",
    "check_outputs",
    "reference_rows",
    "traversal_grid",
    "format_table",
    "side_by_side",
    "CEILING",
    "FLOOR",
]

#: column names of the reference rows
CEILING = "ceiling (oracle)"
FLOOR = "floor (rotated oracle)"
#: why Jacobian measures are skipped for piecewise-constant generators
PIECEWISE_NA = "n/a: piecewise constant in z (zero Jacobian almost everywhere)"


def evaluate_generator(
    G,
    *,
    dataset: str,
    size: int,
    predictor,
    n: int = 2000,
    seed: int = 0,
    n_active: int = 200,
    real_images: torch.Tensor | None = None,
    n_align: int = 64,
    align_k: int | None = None,
) -> dict:
    """Disentanglement and sample statistics of G: (N, d) -> (N, 1, size, size) in [0, 1].

    Args:
        G: the generator (its latent size is read from `G.latent_dim`). A G with a true
            `piecewise_constant` attribute (the reference oracles) gets no axis alignment.
        dataset, size: the procedural dataset G was trained on (names the factors).
        predictor: a fitted FactorPredictor for that dataset.
        n: latent samples for MIG / DCI / Frechet distance (a G(z) that is not finite in any
            of them raises ValueError naming the rows, as the library does).
        seed: seed of the latent samples (and of the real images when not given).
        n_active: samples for activeness.
        real_images: (M, 1, size, size) real images for the Frechet distance; default: n rendered.
            The real-vs-real reference uses a second set of the same size, rendered with another seed.
        n_align: samples for axis alignment (0: skip it).
        align_k: singular vectors for axis alignment (default: min(d, number of measured factors)).

    Returns:
        dict with the keys
        - mig, mig_per_factor {name: float}, mig_winner_per_factor {name: latent index or None},
          mig_distinct_winners (bool), mig_sup, mig_sup_per_latent [d floats];
        - varying_factors (int), constant_factors [names], num_factors (int): which factors the
          generator varies (`varying_mask` on the predicted levels: at least 1% of the samples
          off the most common level), shared by MIG and DCI;
        - dci_disentanglement, dci_completeness, dci_informativeness (over varying factors only),
          dci_informativeness_per_factor {name: float or None (constant)};
        - activeness (per_dim, active_dims, effective_dims);
        - axis_alignment: the `axis_alignment` dict, or a string saying why it is n/a;
        - frechet_distance, frechet_real (real vs real, same n, same features), frechet_ratio
          (frechet_distance / frechet_real: about 1 for a generator that matches the data);
        - factor_names, n, seconds.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    check_int("n", n, 10)
    check_int("n_active", n_active, 1)
    check_int("n_align", n_align, 0)
    if not hasattr(G, "latent_dim"):
        raise ValueError("G must have a latent_dim attribute (the size of its latent)")
    t0 = time.perf_counter()
    z = _latents(G, n, seed)
    d = z.shape[1]
    images = _finite_images(generate(G, z, chunk=500)).clamp(0, 1)
    pred, feats = predictor.predict(images, return_features=True)
    levels = predictor.to_levels(pred)
    names = list(predictor.factor_names)
    vary = varying_mask(levels.numpy())
    m = mig(z.numpy(), levels.numpy(), varying=vary)
    # DCI: class index for categorical factors, the predicted value in [0, 1] for ordinal ones
    dc = dci(z.numpy(), pred.numpy(), categorical=predictor.categorical, seed=seed, varying=vary)
    act = activeness_summary(activeness(G, z[:n_active]))
    align = _alignment(G, z[:n_align], min(d, len(names)) if align_k is None else align_k)
    fd, fd_real = _frechet(predictor, feats, dataset, size, n, seed, real_images)
    return {
        "mig": m["mig"],
        "mig_per_factor": dict(zip(names, m["per_factor"])),
        "mig_winner_per_factor": dict(zip(names, m["winner_per_factor"])),
        "mig_distinct_winners": m["distinct_winners"],
        "mig_sup": m["mig_sup"],
        "mig_sup_per_latent": m["mig_sup_per_latent"],
        "varying_factors": m["varying_factors"],
        "constant_factors": [nm for nm, v in zip(names, vary) if not v],
        "num_factors": len(names),
        "dci_disentanglement": dc["disentanglement"],
        "dci_completeness": dc["completeness"],
        "dci_informativeness": dc["informativeness"],
        "dci_informativeness_per_factor": dict(zip(names, dc["informativeness_per_factor"])),
        "dci_varying_factors": dc["varying_factors"],
        "activeness": act,
        "axis_alignment": align,
        "frechet_distance": fd,
        "frechet_real": fd_real,
        "frechet_ratio": fd / fd_real if fd_real > 0 else float("inf"),
        "factor_names": names,
        "n": n,
        "seconds": time.perf_counter() - t0,
    }


def _latents(G, n: int, seed: int) -> torch.Tensor:
    """The evaluation's latents [n, G.latent_dim], z ~ N(0, I) from `seed`."""
    return torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))


def _finite_images(images: torch.Tensor) -> torch.Tensor:
    """images [N, ...] as they are; ValueError naming the rows (the latents' rows) that are not finite."""
    name_rows(
        ~torch.isfinite(images.reshape(images.shape[0], -1)).all(dim=1), "G(z) has non-finite values (NaN or Inf)"
    )
    return images


def check_outputs(G, *, n: int = 2000, seed: int = 0, rows: int = 256) -> None:
    """Raise ValueError naming the rows where G(z) is not finite, on the first `rows` of the
    latents `evaluate_generator(G, n=n, seed=seed)` draws (row numbers as there): a generator
    with NaN weights is reported in seconds, before a factor predictor is fitted for it."""
    if not hasattr(G, "latent_dim"):
        raise ValueError("G must have a latent_dim attribute (the size of its latent)")
    _finite_images(generate(G, _latents(G, n, seed)[:rows], chunk=rows))


def _alignment(G, z: torch.Tensor, k: int):
    """The `axis_alignment` dict on latents z [n, d], or a string saying why it is n/a."""
    if getattr(G, "piecewise_constant", False):
        return PIECEWISE_NA
    if z.shape[0] == 0:
        return "n/a: not measured (n_align=0)"
    return axis_alignment(G, z, k, method="dense")


def _frechet(predictor, feats: torch.Tensor, dataset: str, size: int, n: int, seed: int, real_images):
    """(Frechet distance of the generated features to real ones, real-vs-real with the same n)."""
    if real_images is None:
        real_images = make_dataset(dataset, n, size=size, seed=10_000 + seed).images
    real_b = make_dataset(dataset, real_images.shape[0], size=size, seed=20_000 + seed).images
    _, real_feats = predictor.predict(real_images, return_features=True)
    _, real_feats_b = predictor.predict(real_b, return_features=True)
    return frechet_distance(real_feats, feats), frechet_distance(real_feats, real_feats_b)


def reference_rows(dataset: str, size: int, latent_dim: int, predictor, n: int = 2000, seed: int = 0) -> dict:
    """The pipeline's own ceiling and floor: evaluate_generator on the oracle generator
    z_i -> factor i of `dataset`, and on the same oracle applied to R z (R a fixed random
    orthogonal matrix, drawn from `seed`), with the same predictor, n and seed as the models.

    Returns {CEILING: results, FLOOR: results} ("ceiling (oracle)", "floor (rotated oracle)"),
    ready to merge into the dict given to `format_table`. Axis alignment is n/a for both (the
    oracles are piecewise constant in z)."""
    ceiling = oracle_generator(dataset, latent_dim, size, rotated=False, seed=seed)
    floor = oracle_generator(dataset, latent_dim, size, rotated=True, seed=seed)
    return {
        CEILING: evaluate_generator(ceiling, dataset=dataset, size=size, predictor=predictor, n=n, seed=seed),
        FLOOR: evaluate_generator(floor, dataset=dataset, size=size, predictor=predictor, n=n, seed=seed),
    }


@torch.no_grad()
def traversal_grid(
    G,
    *,
    z0: torch.Tensor | None = None,
    span: float = 2.5,
    n: int = 9,
    scale: int = 2,
    title: str | None = None,
    seed: int = 0,
) -> Image.Image:
    """One row per latent dimension i: G(z0 + t e_i), t in linspace(-span, span, n). z0: (1, d)
    (default: `viz.typical_latent(d, seed=seed)`, a seeded N(0, I) draw rescaled to the typical
    norm sqrt(d); z = 0 is far from where a Gaussian latent's mass lies and often renders
    nothing). Returns an RGB image with row labels (and a title line if given)."""
    from spectral_ops.lab.viz import coordinate_traversal, make_grid, typical_latent

    d = G.latent_dim
    z0 = typical_latent(d, seed=seed) if z0 is None else z0.reshape(1, d)
    rows, _ = coordinate_traversal(G, z0, list(range(d)), span=span, n=n)
    grid = make_grid(rows.clamp(0, 1), row_labels=[f"z{i}" for i in range(d)], value_range=(0.0, 1.0), scale=scale)
    return _titled(grid, title) if title else grid


def _titled(img: Image.Image, title: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    ImageDraw.Draw(out).text((4, 2), title, fill=(0, 0, 0))
    out.paste(img, (0, 16))
    return out


def side_by_side(images: list[Image.Image], gap: int = 12) -> Image.Image:
    """Paste images left to right on a white background."""
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


NA = "n/a"


def _num(fmt: str):
    def f(v):
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else NA

    return f


def _cell(fn, r: dict) -> str:
    """fn(r) as a string, "n/a" when a key is missing or the value does not apply."""
    try:
        out = fn(r)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        return NA
    return NA if out is None else str(out)


def _align(r: dict) -> dict:
    a = r["axis_alignment"]
    if not isinstance(a, dict):
        raise TypeError("n/a")
    return a


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table, one column per run (name -> evaluate_generator output, optionally with
    'train_seconds'): any number of columns (models, then the reference rows). A value a column
    does not have, or that does not apply to it, prints as "n/a"."""
    names = list(results)
    if not names:
        raise ValueError("results must name at least one run")
    factors: list[str] = []
    for r in results.values():
        for f in r.get("factor_names", []):
            if f not in factors:
                factors.append(f)
    ks = [_align(r)["k"] for r in results.values() if isinstance(r.get("axis_alignment"), dict)]
    k = max(ks) if ks else 0
    f3, f2 = _num(".3f"), _num(".2f")

    def winner(r, f):
        w = r["mig_winner_per_factor"][f]
        return f"{f3(r['mig_per_factor'][f])} (z{w})" if w is not None else f"{f3(r['mig_per_factor'][f])} (const)"

    def axis_cell(r, i):
        a = _align(r)
        return f"{f3(a['per_index'][i])} (z{a['axis'][i]})"

    rows = [("MIG (higher better)", lambda r: f3(r["mig"]))]
    for f in factors:
        rows.append(
            (
                f"  MIG {f} (winning latent)",
                lambda r, f=f: winner(r, f) if "mig_winner_per_factor" in r else f3(r["mig_per_factor"][f]),
            )
        )
    rows += [
        ("  distinct latents", lambda r: "yes" if r["mig_distinct_winners"] else "no"),
        ("MIG-sup (higher better)", lambda r: f3(r["mig_sup"])),
        ("varying factors", lambda r: f"{r['varying_factors']}/{r.get('num_factors', len(r['factor_names']))}"),
        ("DCI disentanglement", lambda r: f3(r["dci_disentanglement"])),
        ("DCI completeness", lambda r: f3(r["dci_completeness"])),
        ("DCI informativeness", lambda r: f3(r["dci_informativeness"])),
        ("active dims (>10% of max)", lambda r: f"{r['activeness']['active_dims']}/{len(r['activeness']['per_dim'])}"),
        ("effective dims", lambda r: f2(r["activeness"]["effective_dims"])),
    ]
    if k:
        rows.append(("axis alignment (1 = on an axis)", lambda r: f3(_align(r)["mean"])))
        for i in range(k):
            rows.append((f"  v{i + 1}: max_j v_j^2 (axis)", lambda r, i=i: axis_cell(r, i)))
        rows.append(("  distinct axes", lambda r: "yes" if _align(r)["distinct_axes"] else "no"))
        rows.append(("  random direction", lambda r: f3(_align(r)["chance"])))
        for i in range(k - 1):
            rows.append((f"  sigma{i + 2}/sigma{i + 1}", lambda r, i=i: f3(_align(r)["sigma_ratios"][i])))
    rows += [
        ("Frechet dist. (lower better)", lambda r: f2(r["frechet_distance"])),
        ("Frechet real vs real", lambda r: f2(r["frechet_real"])),
        ("Frechet ratio (x real-vs-real)", lambda r: f2(r["frechet_ratio"])),
        ("train time (s)", lambda r: f"{r['train_seconds']:.1f}"),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    cells = [[_cell(fn, results[n]) for n in names] for _, fn in rows]
    cols = [max([len(n), 9] + [len(c[j]) for c in cells]) + 2 for j, n in enumerate(names)]
    lines = ["".ljust(w0) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    lines.append("-" * (w0 + sum(cols)))
    for (label, _), row in zip(rows, cells):
        lines.append(label.ljust(w0) + "".join(v.rjust(c) for v, c in zip(row, cols)))
    return "\n".join(lines)
