"""Experiment: does the spectral regularizer disentangle the demo GAN? Baseline vs the
regularizer's loss variants (l1, assigned, offdiag) and gradient modes (fast, implicit),
optionally vs the peer regularizers, each at its own swept weight, over several seeds.

Every run trains the demo's GAN (same data, architecture and optimiser; only the regularizer
differs), then measures MIG, DCI and the Frechet distance with the cached factor predictor.
Results are appended to `<out>/runs.jsonl` as each run finishes (so a background run can be
watched and resumed: finished (variant, weight, seed) runs are skipped), and summarised as mean +- std
in `<out>/summary.json` and `<out>/summary.md`.

A variant may carry its own regularizer weight after `@` (`offdiag/fast@0.1`, `hessian@0.1`);
without one it uses `--reg-weight`.  Each run also records `varying_factors`: how many of the
predicted factors vary at all over the generator's samples (a factor that never varies scores 0
in MIG and counts in its mean).

    python bench/experiment_disentangle.py --steps 400 --seeds 0 1 2 --threads 1 --out runs/experiment
    python bench/experiment_disentangle.py --variants baseline offdiag/fast offdiag/fast@0.1 hessian@0.1 ...
    nohup python bench/experiment_disentangle.py ... > runs/experiment.log 2>&1 &   # background
    --shard 0/2 and --shard 1/2 in two processes split the runs (2 cores); --summarise only
    rebuilds the tables from runs.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectral_ops.lab.evaluate import evaluate_generator
from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.config import RegularizerConfig
from spectral_ops.lab.train import TRAIN_REGULARIZER, TrainConfig, train

VARIANTS = {
    "baseline": dict(reg="none"),
    **{
        f"{loss}/{grad}": dict(reg="spectral", reg_config=TRAIN_REGULARIZER.replace(loss=loss, grad=grad))
        for loss in ("l1", "assigned", "offdiag")
        for grad in ("fast", "implicit")
    },
    "hessian": dict(reg="hessian"),
    "orojar": dict(reg="orojar"),
    "jacobian_l1": dict(reg="jacobian_l1"),
    "path_length": dict(reg="path_length"),
}
DEFAULT = ["baseline", "l1/fast", "assigned/fast", "offdiag/fast", "hessian", "orojar"]
METRICS = (
    "mig",
    "mig_sup",
    "distinct_winners",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "frechet_distance",
    "frechet_ratio",
    "varying_factors",
    "alignment_mean",
    "sigma_ratio_min",
    "effective_dims",
    "train_seconds",
)


def _modifier(base: dict, item: str, text: str) -> dict:
    """Apply one '+field=value' of a variant: a TrainConfig field (latent_map=uniform) or, with the
    prefix reg_, a field of the spectral regularizer's config (reg_k=10, reg_weights=singular)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or not raw:
        raise ValueError(f"bad modifier {item!r} in variant {text!r} (expected +field=value)")
    value: object = raw
    for cast in (int, float):
        try:
            value = cast(raw)
            break
        except ValueError:
            pass
    if key.startswith("reg_") and key[4:] in {f.name for f in dataclasses.fields(RegularizerConfig)}:
        if "reg_config" not in base:
            raise ValueError(f"{key} in variant {text!r}: only the spectral variants have a regularizer config")
        return {**base, "reg_config": base["reg_config"].replace(**{key[4:]: value})}
    if key in {f.name for f in dataclasses.fields(TrainConfig)} and key not in ("reg", "reg_config", "reg_weight"):
        return {**base, key: value}
    raise ValueError(f"unknown field {key!r} in variant {text!r}")


def parse_variant(text: str, default_weight: float) -> tuple[str, dict, float]:
    """'name[+field=value...][@weight]' -> (name, train options, regularizer weight); a modifier
    sets a TrainConfig field (+latent_map=uniform) or a regularizer field (+reg_k=10)."""
    spec, sep, w = text.partition("@")
    name, *modifiers = spec.split("+")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    try:
        weight = float(w) if sep else default_weight
    except ValueError:
        raise ValueError(f"bad weight in variant {text!r}") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0 in variant {text!r}")
    opts = dict(VARIANTS[name])
    for item in modifiers:
        opts = _modifier(opts, item, text)
    return name, opts, weight


def _variant_arg(text: str) -> str:
    try:
        parse_variant(text, 1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _weight_of(record: dict) -> float:
    return record.get("reg_weight", record.get("config", {}).get("reg_weight", 1.0))


def _mean_std(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def record_of(ev: dict) -> dict:
    """The scalars of an evaluate_generator result that the tables use (NaN when absent)."""
    nan = float("nan")
    align = ev.get("axis_alignment") if isinstance(ev.get("axis_alignment"), dict) else {}
    per_index = align.get("per_index") or []
    ratios = align.get("sigma_ratios") or []
    return {
        "mig": ev["mig"],
        "mig_per_factor": ev["mig_per_factor"],
        "mig_sup": ev.get("mig_sup", nan),
        "distinct_winners": float(ev["mig_distinct_winners"]) if "mig_distinct_winners" in ev else nan,
        "winner_per_factor": ev.get("mig_winner_per_factor"),
        "varying_factors": ev["varying_factors"],
        "dci_disentanglement": ev["dci_disentanglement"],
        "dci_completeness": ev["dci_completeness"],
        "dci_informativeness": ev["dci_informativeness"],
        "frechet_distance": ev["frechet_distance"],
        "frechet_real": ev.get("frechet_real", nan),
        "frechet_ratio": ev.get("frechet_ratio", nan),
        "alignment_per_index": per_index,
        "alignment_mean": (sum(per_index) / len(per_index)) if per_index else nan,
        "sigma_ratios": ratios,
        "sigma_ratio_min": min(ratios) if ratios else nan,
        "effective_dims": ev["activeness"]["effective_dims"] if isinstance(ev.get("activeness"), dict) else nan,
    }


def summarise(records: list[dict], variants: list[str]) -> tuple[dict, str]:
    summary = {}
    for v in variants:
        rs = [r for r in records if r["variant"] == v]
        if rs:
            summary[v] = {
                "seeds": [r["seed"] for r in rs],
                "reg_weight": _weight_of(rs[0]),
                **{m: _mean_std([r.get(m) for r in rs]) for m in METRICS},
            }
    head = (
        "| variant | seeds | MIG | MIG-sup | distinct winners | DCI disent. | DCI compl. | DCI inform. "
        "| Frechet / real-vs-real | varying factors | axis alignment v1..vk | min sigma_i+1/sigma_i | train s |"
    )
    lines = [head, "|" + "---|" * 13]
    shown = tuple(m for m in METRICS if m not in ("frechet_distance", "effective_dims", "train_seconds"))
    for v, s in summary.items():
        cells = [("n/a" if math.isnan(s[m][0]) else f"{s[m][0]:.3f} ± {s[m][1]:.3f}") for m in shown]
        t = s["train_seconds"][0]
        cells.append("-" if math.isnan(t) else f"{t:.0f}")
        lines.append(f"| {v} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT,
        type=_variant_arg,
        metavar="VARIANT[+FIELD=VALUE...][@WEIGHT]",
        help=f"runs to compare (default: {' '.join(DEFAULT)}; also: "
        + " ".join(v for v in VARIANTS if v not in DEFAULT)
        + "); '@W' sets that variant's regularizer weight, '+field=value' a TrainConfig field "
        + "(+latent_map=uniform) or, prefixed reg_, a spectral regularizer field (+reg_k=10)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--steps", type=int, default=400, help="GAN steps per run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument(
        "--reg-weight",
        type=float,
        default=1.0,
        help="regularizer weight of variants without '@W' (default: %(default)s)",
    )
    p.add_argument("--n-eval", type=int, default=2000, help="latent samples per evaluation (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="factor-predictor cache")
    p.add_argument("--out", default="runs/experiment", help="output folder (default: %(default)s)")
    p.add_argument("--dataset", default="sprites", help="procedural dataset (default: %(default)s)")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (default: the trainer's)")
    p.add_argument("--shard", default="0/1", help="I/N: run only every N-th pending run starting at I (default: all)")
    p.add_argument("--summarise", action="store_true", help="only rebuild summary.md/json from runs.jsonl")
    p.add_argument("--progress", action="store_true", help="show per-run progress bars")
    args = p.parse_args(argv)
    if args.steps < 1 or len(args.seeds) < 1:
        p.error("--steps must be >= 1 and at least one seed given")
    if not (math.isfinite(args.reg_weight) and args.reg_weight >= 0):
        p.error("--reg-weight must be a finite number >= 0")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "runs.jsonl"
    records = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    done = {(r["variant"], r["seed"], r["steps"], _weight_of(r)) for r in records}
    weight = {v: parse_variant(v, args.reg_weight)[2] for v in args.variants}
    predictor, pinfo = load_or_fit_predictor(
        PredictorConfig(dataset=args.dataset), cache_dir=args.cache_dir, progress=args.progress
    )
    t0 = time.perf_counter()
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    todo = [(v, s) for s in args.seeds for v in args.variants][shard::n_shards]  # shards fixed by the full list
    todo = [] if args.summarise else [(v, s) for v, s in todo if (v, s, args.steps, weight[v]) not in done]
    extra = {} if args.latent_dim is None else {"latent_dim": args.latent_dim}
    for i, (v, seed) in enumerate(todo):
        _, opts, w = parse_variant(v, args.reg_weight)
        cfg = TrainConfig(
            dataset=args.dataset,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=seed,
            reg_weight=w,
            **extra,
            out=str(out / v.replace("/", "-").replace("@", "_w").replace("+", "_").replace("=", "-") / f"seed{seed}"),
            ckpt_every=args.steps,
            log_every=50,
            **opts,
        )
        res = train(cfg, overwrite=True, progress=args.progress, desc=f"{v} seed {seed}")
        ev = evaluate_generator(
            res.G, dataset=cfg.dataset, size=cfg.size, predictor=predictor, n=args.n_eval, seed=seed
        )
        rec = {
            "variant": v,
            "seed": seed,
            "steps": args.steps,
            "reg_weight": w,
            "train_seconds": res.seconds,
            **record_of(ev),
            "config": dataclasses.asdict(cfg),
        }
        records.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"[{i + 1}/{len(todo)}] {v} seed {seed}: MIG {rec['mig']:.3f} DCI-D {rec['dci_disentanglement']:.3f} "
            f"FD {rec['frechet_distance']:.2f} (x{rec['frechet_ratio']:.1f} real) varying {rec['varying_factors']} "
            f"align {rec['alignment_mean']:.2f} "
            f"({res.seconds:.0f} s train, {time.perf_counter() - t0:.0f} s total)",
            flush=True,
        )
    records = [r for r in records if r["steps"] == args.steps and _weight_of(r) == weight.get(r["variant"])]
    # the pipeline's own ceiling and floor, per seed, through the same evaluation
    from spectral_ops.lab.evaluate import reference_rows

    latent = args.latent_dim or TrainConfig().latent_dim
    for seed in args.seeds:
        refs = reference_rows(args.dataset, TrainConfig().size, latent, predictor, n=args.n_eval, seed=seed)
        for name, ev in refs.items():
            records.append({"variant": name, "seed": seed, "train_seconds": float("nan"), **record_of(ev)})
    summary, table = summarise(records, list(refs) + args.variants)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "steps": args.steps,
                "seeds": args.seeds,
                "summary": summary,
                "predictor_validation": pinfo["validation"],
                "experiment_seconds": time.perf_counter() - t0,
            },
            indent=2,
        )
    )
    cmd = "python bench/experiment_disentangle.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "summary.md").write_text(f"{table}\n\nCommand: `{cmd}`\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
