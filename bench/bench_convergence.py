"""Are the vectors the loss sees converged, at realistic latent sizes, and at what cost per call?

Run:  python bench/bench_convergence.py [--setting NAME=JSON ...] [--generators a,b] [--solver] [--no-train]
      (writes bench/results/convergence.md/json; rows already there for other (generator, setting)
      pairs are kept, so settings can be measured in separate runs)

Generators (bench/generators.py, each at its usual latent size, untrained, torch.manual_seed(0)):

- "DCGAN": `BatchNormDCGAN` nz = 100, 32x32x3, ngf = 64, BatchNorm in training mode (running
  statistics from 20 training-mode batches; the regularizer runs with batchnorm="eval");
- "MLP": `MLPGenerator`, WGAN-GP style, latent 100, Linear-ReLU 256-512-1024 -> 28x28x1;
- "style": `StyleGenerator`, z = w = 64, a 4-layer mapping network, 32x32x3 (fused_modconv=False:
  the same function, cheaper products);
- "trained": spectral_ops.lab's DCGAN trained at latent 64 on `spot` with the regularizer
  (`trained_checkpoint`: 1500 steps, about 3 minutes on one core, cached under
  bench/results/convergence_gan/, not committed).

Settings: "before (power, iters=2)" = the old defaults, dict(solver="power", iters=2, tol=1e-4)
("solver" is passed only where RegularizerConfig has that field), "defaults" = {}, or any
`--setting name={"iters": 4}`.  For each generator and setting, the calls a trainer makes: a
SpectralRegularizer(d, every=1, **setting) (every call computes; batch_fraction 0.25: 8 of 32 rows),
48 calls at a fixed G with new N(0, I) latents each call (the same latents for every setting),
each call followed by the penalty's backward.  Over the last 24 calls (after warm-up) it compares
what the loss saw (`reg.last_vectors`, `last_values`, `last_residuals`, `last_active` where it
exists) with the exact top-5 eigenpairs of J^T J at `reg.last_latents`: J in float64 by forward-mode
autodiff (torch.func.jacfwd), then eigh (cached in the temp folder across runs).

--solver adds the inner-solver section: per untrained generator, B = 8 rows, products per sample
that jacobian_topk(method="krylov", tol=t) needs for t in (0.05, 0.01, 1e-3), cold and warm
(init = the previous call's vectors, on other latents), and the power iterations that reach the
same worst residual per sample.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import spectral_ops
from spectral_ops import SpectralRegularizer

from generators import BatchNormDCGAN, MLPGenerator, StyleGenerator

RESULTS = os.path.join(os.path.dirname(__file__), "results")
TRAINED_DIR = os.path.join(RESULTS, "convergence_gan")
CACHE = os.path.join(tempfile.gettempdir(), "spectral_ops_bench_convergence")
CALLS, KEEP, B, K = 48, 24, 32, 4
HAS_SOLVER = "solver" in spectral_ops.RegularizerConfig.__dataclass_fields__
BUILTIN = {"before (power, iters=2)": dict(solver="power", iters=2, tol=1e-4), "defaults": {}}
#: the trained generator: spectral_ops.lab's trainer, latent 64, with the regularizer
TRAIN = dict(
    dataset="spot",
    latent_dim=64,
    steps=1500,
    batch_size=64,
    reg="spectral",
    reg_weight=0.3,
    n_train=5000,
    ckpt_every=1500,
    log_every=100,
    seed=0,
)


# ---------------------------------------------------------------------------- generators
def trained_checkpoint(train_if_missing: bool = True) -> str | None:
    """Path of the trained generator's checkpoint (trained here first when missing and allowed)."""
    path = os.path.join(TRAINED_DIR, "checkpoint.pt")
    if os.path.isfile(path) or not train_if_missing:
        return path if os.path.isfile(path) else None
    from spectral_ops.lab.train import TrainConfig, train

    print(f"training the latent-64 GAN ({TRAIN['steps']} steps) ...", flush=True)
    res = train(TrainConfig(out=TRAINED_DIR, **TRAIN), overwrite=True, progress=False)
    print(f"trained in {res.seconds:.0f} s", flush=True)
    return res.checkpoint


def generators(names, train_if_missing=True):
    """Yields (name, G, latent dim, batchnorm policy).  G's parameters are left trainable."""
    torch.manual_seed(0)
    if "DCGAN" in names:
        yield "DCGAN", BatchNormDCGAN(100, size=32, width=64, channels=3).warm_statistics(), 100, "eval"
    torch.manual_seed(0)
    if "MLP" in names:
        yield "MLP", MLPGenerator(100, size=28), 100, "error"
    torch.manual_seed(0)
    if "style" in names:
        yield "style", StyleGenerator(64, size=32, w_dim=64, fused_modconv=False).eval(), 64, "error"
    if "trained" in names:
        path = trained_checkpoint(train_if_missing)
        if path is None:
            print("no trained checkpoint: skipped", flush=True)
            return
        from spectral_ops.lab.train import load_generator

        G, cfg = load_generator(path)
        yield "trained", G, cfg.latent_dim, "error"


GENERATOR_NOTES = {
    "DCGAN": "BatchNormDCGAN, nz=100, ngf=64, 32x32x3, BatchNorm in training mode (batchnorm='eval')",
    "MLP": "MLPGenerator (WGAN-GP style), latent 100, Linear-ReLU 256-512-1024 -> 28x28x1",
    "style": "StyleGenerator, z = w = 64, 4-layer mapping, 32x32x3",
    "trained": "spectral_ops.lab DCGAN, latent 64, 32x32x1, trained 1500 steps on spot with the regularizer (EMA)",
}


# ---------------------------------------------------------------------------- the exact reference
def exact(G, z: torch.Tensor, n: int = K + 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n eigenpairs of J^T J at z [b, d]: (vectors [b, n, d], singular values [b, n]), float64.

    J [b, m, d] by forward-mode autodiff on a float64 copy of G in eval mode (the function the
    regularizer differentiates under batchnorm='eval'); eigh of J^T J in float64."""
    from torch.func import jacfwd, vmap

    G64 = copy.deepcopy(G).eval().double()
    for p in G64.parameters():
        p.requires_grad_(False)
    J = vmap(jacfwd(lambda x: G64(x[None])[0].reshape(-1)))(z.detach().double())
    lam, U = torch.linalg.eigh(J.transpose(1, 2) @ J)
    return U.flip(-1)[..., :n].transpose(1, 2).contiguous(), lam.flip(-1)[:, :n].clamp_min(0).sqrt()


def cached_exact(name: str, G, z: torch.Tensor):
    """`exact(G, z)`, stored on disk by (generator name, G's weights, z)."""
    h = hashlib.sha1(z.detach().double().numpy().tobytes())
    for t in G.state_dict().values():
        h.update(t.detach().double().numpy().tobytes()[:4096])
    path = os.path.join(CACHE, f"{name}-{h.hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        return torch.load(path)
    out = exact(G, z)
    os.makedirs(CACHE, exist_ok=True)
    torch.save(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    return out


# ---------------------------------------------------------------------------- one setting
def effective(setting: dict) -> dict:
    """The setting as this version's RegularizerConfig takes it ("solver" dropped where unknown)."""
    return {k: v for k, v in setting.items() if k != "solver" or HAS_SOLVER}


def _median(xs):
    return float(torch.as_tensor(xs, dtype=torch.float64).median()) if len(xs) else None


def measure(name: str, G, d: int, bn: str, setting: dict) -> dict:
    """The trainer's calls at a fixed G; statistics over the last KEEP calls (module docstring)."""
    reg = SpectralRegularizer(d, every=1, batchnorm=bn, **effective(setting))
    gen = torch.Generator().manual_seed(5)
    cos, ratio, verr, overlap, worst, active, seconds = [], [], [], [], [], [], []
    for call in range(CALLS):
        z = torch.randn(B, d, generator=gen)
        t0 = time.perf_counter()
        reg(G, z).backward()
        dt = time.perf_counter() - t0
        G.zero_grad(set_to_none=True)
        if call < CALLS - KEEP:
            continue
        V_ex, S_ex = cached_exact(name, G, reg.last_latents)
        V, S = reg.last_vectors.double(), reg.last_values.double()
        cos.append((V * V_ex[:, :K]).sum(-1).abs())
        ratio.append(S_ex[:, 1:] / S_ex[:, :-1].clamp_min(1e-300))
        verr.append((S - S_ex[:, :K]).abs() / S_ex[:, :K].clamp_min(1e-300))
        overlap.append((V_ex[:, :K] @ V.transpose(1, 2)).pow(2).sum((1, 2)) / K)
        worst.append(reg.last_residuals.double().max(-1).values)
        la = getattr(reg, "last_active", None)
        if la is not None:
            active.append(torch.as_tensor(la, dtype=torch.float64).flatten())
        seconds.append(dt)
    cos, ratio, verr = torch.cat(cos), torch.cat(ratio), torch.cat(verr)
    overlap, worst = torch.cat(overlap), torch.cat(worst)
    return {
        "median_cos": cos.median(0).values.tolist(),
        "p10_cos": cos.quantile(0.1, dim=0).tolist(),
        "median_sigma_ratio": ratio.median(0).values.tolist(),
        "median_value_error": verr.median(0).values.tolist(),
        "median_span_overlap": float(overlap.median()),
        "p10_span_overlap": float(overlap.quantile(0.1)),
        "median_worst_residual": float(worst.median()),
        "p90_worst_residual": float(worst.quantile(0.9)),
        "median_active": _median(torch.cat(active)) if active else None,
        "max_active": float(torch.cat(active).max()) if active else None,
        "seconds_per_call": statistics.median(seconds),
        "samples": int(cos.shape[0]),
        "config": effective(setting),
        "solver_field": HAS_SOLVER,
    }


# ---------------------------------------------------------------------------- the inner solver's needs
SOLVER_TOLS, SOLVER_CALLS, SOLVER_B = (0.05, 0.01, 1e-3), 4, 8
KRYLOV_CAP, POWER_CAP = 100, 300


def _krylov_counts(G, z, bn, tol, init):
    """jacobian_topk(method="krylov") as it runs, with the products per sample: (V [b, k, d],
    residuals [b, k], products per sample [b], passes).  The library's own steps (krylov._krylov_topk)
    with the per-sample count that TopK does not return."""
    from spectral_ops import ops
    from spectral_ops.generator import prepared
    from spectral_ops.krylov import block_lanczos, krylov_block
    from spectral_ops.krylov import _ShrinkingProducts
    from spectral_ops.power import _initial_basis

    with prepared(G, z, jvp="auto", batchnorm=bn) as (Gp, zp, mode):
        b, d = zp.shape
        cdtype = ops.common.compute_dtype(zp.dtype)
        p = krylov_block(b, K)
        X, V_prev = _initial_basis(init, b, K, d, cdtype, zp.device, None)
        X = X if init is not None else X[:, :p]
        products = _ShrinkingProducts(Gp, zp, p, mode, cdtype)
        MX = products(X, torch.arange(b))
        r = block_lanczos(products, X, MX, K, p, max(KRYLOV_CAP * K, X.shape[1]), tol)
    return r.V, r.res, r.vectors, r.passes + -(-X.shape[1] // p)


def _power_counts(G, z, bn, tols, init):
    """Block power iteration (the regularizer's: power.power_iteration, one step at a time) until
    every sample's worst residual is below min(tols) or POWER_CAP: {tol: iterations per sample
    [b] (POWER_CAP + 1 where not reached)}, seconds per iteration, V at the end."""
    from spectral_ops import ops
    from spectral_ops.generator import prepared
    from spectral_ops.jacobian import JacobianOperator
    from spectral_ops.power import _initial_basis, power_iteration

    with prepared(G, z, jvp="auto", batchnorm=bn) as (Gp, zp, mode):
        b, d = zp.shape
        cdtype = ops.common.compute_dtype(zp.dtype)
        Q, V_prev = _initial_basis(init, b, K, d, cdtype, zp.device, None)
        op = JacobianOperator(Gp, zp, K, mode)
        reached = {t: torch.full((b,), POWER_CAP + 1) for t in tols}
        t0, it = time.perf_counter(), 0
        for it in range(1, POWER_CAP + 1):
            r = power_iteration(op, Q, V_prev, 1, 0.0, cdtype)
            worst = r.res.max(-1).values
            for t in tols:
                new = (reached[t] > POWER_CAP) & (worst < t)
                reached[t][new] = it
            if bool((reached[min(tols)] <= POWER_CAP).all()):
                break
            Q, V_prev = r.Q_next, r.V
        per_iter = (time.perf_counter() - t0) / it
    return reached, per_iter, r.V


def solver_needs(name: str, G, d: int, bn: str) -> list[dict]:
    """Products per sample for krylov and power, cold and warm, at B = SOLVER_B (module docstring).
    Statistics over calls 1..SOLVER_CALLS-1 (call 0 only provides the first warm start)."""
    gen = torch.Generator().manual_seed(11)
    zs = [torch.randn(SOLVER_B, d, generator=gen) for _ in range(SOLVER_CALLS)]
    refs = [cached_exact(name, G, z) for z in zs]
    rows = []
    for start in ("cold", "warm"):
        for tol in SOLVER_TOLS:
            prev, counts, secs, overlaps, cos1, passes = None, [], [], [], [], []
            for i, z in enumerate(zs):
                t0 = time.perf_counter()
                V, res, vectors, npass = _krylov_counts(G, z, bn, tol, prev if start == "warm" else None)
                dt = time.perf_counter() - t0
                if i > 0:
                    V_ex = refs[i][0][:, :K]
                    counts.append(vectors.double())
                    secs.append(dt)
                    passes.append(npass)
                    overlaps.append((V_ex @ V.double().transpose(1, 2)).pow(2).sum((1, 2)) / K)
                    cos1.append((V.double() * V_ex).sum(-1).abs())
                prev = V.detach().float()
            counts, overlaps, cos1 = torch.cat(counts), torch.cat(overlaps), torch.cat(cos1)
            rows.append(
                {
                    "generator": name,
                    "solver": "krylov",
                    "start": start,
                    "tol": tol,
                    "median_products": float(counts.median()),
                    "max_products": float(counts.max()),
                    "median_passes": statistics.median(passes),
                    "seconds_per_call": statistics.median(secs),
                    "median_span_overlap": float(overlaps.median()),
                    "median_cos": cos1.median(0).values.tolist(),
                }
            )
            print(rows[-1], flush=True)
        prev, reached_all, per_iter = None, {t: [] for t in SOLVER_TOLS}, []
        for i, z in enumerate(zs):
            reached, sec, V = _power_counts(G, z, bn, SOLVER_TOLS, prev if start == "warm" else None)
            if i > 0:
                for t in SOLVER_TOLS:
                    reached_all[t].append(reached[t].double())
                per_iter.append(sec)
            prev = V.detach().float()
        sec = statistics.median(per_iter)
        for t in SOLVER_TOLS:
            it = torch.cat(reached_all[t])
            done = it <= POWER_CAP
            rows.append(
                {
                    "generator": name,
                    "solver": "power",
                    "start": start,
                    "tol": t,
                    "median_iterations": float(it.median()),
                    "max_iterations": float(it.max()),
                    "reached": float(done.double().mean()),
                    "median_products": float(it.median()) * K,
                    "seconds_per_iteration": sec,
                    "seconds_per_call": float(it.max()) * sec,
                }
            )
            print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- report
def _load():
    path = os.path.join(RESULTS, "convergence.json")
    if os.path.isfile(path):
        with open(path) as f:
            blob = json.load(f)
        if isinstance(blob, dict):
            return blob
    return {"rows": [], "solver": []}


def _fmt(xs, f="{:.3f}"):
    return " / ".join(f.format(x) for x in xs)


def markdown(blob) -> str:
    lines = [
        "### convergence of the vectors the loss sees, at realistic latent sizes",
        "",
        f"`python bench/bench_convergence.py`: {CALLS} calls of SpectralRegularizer(d, every=1, **setting) at a "
        f"fixed G, {B} new N(0, I) latents a call (8 regularized: batch_fraction 0.25), each followed by the "
        f"penalty's backward; statistics over the last {KEEP} calls ({KEEP * 8} samples) against the exact "
        "eigenpairs of J^T J (float64 J by forward-mode autodiff, eigh).  One torch thread.",
        "",
        "Columns: worst residual = median over samples of max_i `last_residuals` (p90 in brackets); |cos| v_i = "
        "median |cos| to the exact v_i (10th percentile in brackets); sigma ratio = median sigma_{i+1}/sigma_i of "
        "the exact spectrum, i = 1..4 (near 1: v_i is barely defined); value error = median "
        "|sigma_i - exact| / exact; span = median ||V_exact^T V||_F^2 / k (p10); active = `last_active` (median / "
        "max) where the regularizer has it; s/call = median seconds of a call plus its backward.",
        "",
        "Generators: " + "; ".join(f"{k}: {v}" for k, v in GENERATOR_NOTES.items()) + ".",
        "",
        "| generator | setting | worst residual | |cos| v1 | v2 | v3 | v4 | sigma ratio | value error | span | "
        "active | s/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {n: i for i, n in enumerate(GENERATOR_NOTES)}
    for r in sorted(blob["rows"], key=lambda r: (order.get(r["generator"], 99), r["setting"] != next(iter(BUILTIN)))):
        cells = [f"{m:.3f} ({p:.3f})" for m, p in zip(r["median_cos"], r["p10_cos"])]
        act = "-" if r["median_active"] is None else f"{r['median_active']:.0f} / {r['max_active']:.0f}"
        lines.append(
            f"| {r['generator']} | {r['setting']} `{json.dumps(r['config'])}` | "
            f"{r['median_worst_residual']:.3g} ({r['p90_worst_residual']:.3g}) | "
            + " | ".join(cells)
            + f" | {_fmt(r['median_sigma_ratio'], '{:.2f}')} | {_fmt(r['median_value_error'], '{:.3f}')} | "
            f"{r['median_span_overlap']:.3f} ({r['p10_span_overlap']:.3f}) | {act} | "
            f"{r['seconds_per_call']:.3f} |"
        )
    if blob.get("solver"):
        lines += [
            "",
            "### what the inner solver needs",
            "",
            f"`python bench/bench_convergence.py --solver`: the untrained generators above, B = {SOLVER_B} rows, "
            f"k = {K}, {SOLVER_CALLS} calls on new latents; statistics over calls 2..{SOLVER_CALLS} "
            f"({(SOLVER_CALLS - 1) * SOLVER_B} samples).  cold: the fixed random start; warm: init = the previous "
            "call's vectors [B, k, d] (other latents).  krylov: jacobian_topk(method='krylov', tol=t, "
            f"iters={KRYLOV_CAP}) (its own steps, to read the products per sample, M applied to that many "
            "vectors, start included); stop rule: all k residuals of the sample below t.  power: block power "
            "iteration with Rayleigh-Ritz (the regularizer's), k products per sample per iteration, until the "
            f"sample's worst residual is below t (cap {POWER_CAP}; 'reached' = fraction of samples below t by then); "
            "its s/call = the slowest sample's iterations x seconds per iteration (the batch runs until all are "
            "done).  span / |cos| = overlap with the exact top-k at the krylov stop.",
            "",
            "| generator | start | t | krylov products/sample median (max) | passes | s/call | span | |cos| v1..v4 "
            "| power iterations median (max) | products | reached | s/call |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        sol = blob["solver"]
        for r in sol:
            if r["solver"] != "krylov":
                continue
            p = next(
                x
                for x in sol
                if x["solver"] == "power"
                and x["generator"] == r["generator"]
                and x["start"] == r["start"]
                and x["tol"] == r["tol"]
            )
            it_max = ">" + str(POWER_CAP) if p["max_iterations"] > POWER_CAP else f"{p['max_iterations']:.0f}"
            it_med = ">" + str(POWER_CAP) if p["median_iterations"] > POWER_CAP else f"{p['median_iterations']:.0f}"
            lines.append(
                f"| {r['generator']} | {r['start']} | {r['tol']:g} | {r['median_products']:.0f} "
                f"({r['max_products']:.0f}) | {r['median_passes']:.0f} | {r['seconds_per_call']:.3f} | "
                f"{r['median_span_overlap']:.3f} | {_fmt(r['median_cos'])} | {it_med} ({it_max}) | "
                f"{p['median_products']:.0f} | {p['reached']:.2f} | {p['seconds_per_call']:.2f} |"
            )
    lines += [
        "",
        f"- torch {torch.__version__}, {torch.get_num_threads()} thread; RegularizerConfig has `solver`: {HAS_SOLVER}",
    ]
    return "\n".join(lines) + "\n"


def save(rows=(), solver=()) -> dict:
    """Merge `rows` (replacing the same generator and setting) and `solver` rows (replacing the same
    generator's) into what the files hold now (another run may have written since), then write both."""
    blob = _load()
    keys = {(r["generator"], r["setting"]) for r in rows}
    blob["rows"] = [r for r in blob["rows"] if (r["generator"], r["setting"]) not in keys] + list(rows)
    gens = {r["generator"] for r in solver}
    blob["solver"] = [r for r in blob.get("solver", []) if r["generator"] not in gens] + list(solver)
    os.makedirs(RESULTS, exist_ok=True)
    for name, text in (("convergence.json", json.dumps(blob, indent=1)), ("convergence.md", markdown(blob))):
        path = os.path.join(RESULTS, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return blob


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a regularizer setting (default: the built-in 'before (power, iters=2)' and 'defaults'); "
        "a built-in name alone selects it",
    )
    ap.add_argument("--generators", default="DCGAN,MLP,style,trained")
    ap.add_argument("--solver", action="store_true", help="also measure the inner solver's needs")
    ap.add_argument("--solver-only", action="store_true")
    ap.add_argument("--no-train", action="store_true", help="skip the trained generator when its checkpoint is missing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = {}
    for s in args.setting:
        if s in BUILTIN:
            settings[s] = BUILTIN[s]
            continue
        name, _, js = s.rpartition("={")
        if not name:
            raise SystemExit(f"--setting: expected a built-in name {list(BUILTIN)} or NAME=JSON, got {s!r}")
        settings[name] = json.loads("{" + js)
    settings = settings or dict(BUILTIN)
    names = args.generators.split(",")
    blob = _load()
    if not args.solver_only:
        for gname, G, d, bn in generators(names, not args.no_train):
            for sname, setting in settings.items():
                r = measure(gname, G, d, bn, setting)
                blob = save(rows=[dict(generator=gname, setting=sname, **r)])
                print(
                    gname,
                    sname,
                    "worst res %.3g" % r["median_worst_residual"],
                    _fmt(r["median_cos"]),
                    "s/call %.3f" % r["seconds_per_call"],
                    flush=True,
                )
    if args.solver or args.solver_only:
        for gname, G, d, bn in generators([n for n in names if n != "trained"], False):
            blob = save(solver=solver_needs(gname, G, d, bn))
    print(markdown(blob))


if __name__ == "__main__":
    main()
