"""A factor predictor: a small CNN trained on labelled procedural images, used only to *measure*
generated images (it never touches GAN training, which stays unsupervised).

Categorical factors get a softmax head (prediction = class index); ordinal factors get a
regression head on the factor value in [0, 1]. The penultimate features (128-D) feed the
FID-like sample-quality statistic. Fitted predictors are cached on disk, keyed by their config.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from spectral_ops.lab.io import atomic_save
from spectral_ops.lab.data import DATASETS, make_dataset

__all__ = ["FactorPredictor", "PredictorConfig", "fit_predictor", "load_or_fit_predictor", "default_cache_dir"]

_CACHE_VERSION = 3


def default_cache_dir() -> Path:
    """$SPECTRAL_OPS_CACHE if set, else $XDG_CACHE_HOME/spectral_ops, else ~/.cache/spectral_ops."""
    env = os.environ.get("SPECTRAL_OPS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectral_ops"


class FactorPredictor(nn.Module):
    """images (N, 1, S, S) in [0, 1] -> per-factor outputs, for the K measured factors.

    Args:
        factor_sizes: levels of each factor.
        categorical: one flag per factor.
        factor_names: names (for reports).
        size: image side (32 or 64).
        feature_dim: width of the feature layer.
    """

    def __init__(self, factor_sizes, categorical, *, size: int = 32, feature_dim: int = 128, factor_names=None):
        super().__init__()
        if len(factor_sizes) != len(categorical):
            raise ValueError("factor_sizes and categorical must have the same length")
        self.factor_names = (
            list(factor_names) if factor_names is not None else [f"f{j}" for j in range(len(factor_sizes))]
        )
        if size not in (32, 64):
            raise ValueError(f"size must be 32 or 64, got {size!r}")
        self.factor_sizes = [int(s) for s in factor_sizes]
        self.categorical = [bool(c) for c in categorical]
        self.size = size
        layers: list[nn.Module] = []
        c_in, c = 1, 16
        s = size
        while s > 4:  # stride-2 4x4 conv, then a 3x3 conv at that resolution (not at 4x4)
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.ReLU()]
            s //= 2
            c_in, c = c, min(c * 2, 128)
            if s > 4:
                layers += [nn.Conv2d(c_in, c, 3, 1, 1), nn.ReLU()]
                c_in = c
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 16, feature_dim), nn.ReLU())
        self.heads = nn.ModuleList(
            nn.Linear(feature_dim, n if cat else 1) for n, cat in zip(self.factor_sizes, self.categorical)
        )

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, S, S) -> (N, feature_dim)."""
        return self.body(x * 2 - 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, 1, S, S) -> list of K tensors: logits (N, levels) or values (N,)."""
        h = self.features(x)
        return [head(h) if cat else head(h).squeeze(1) for head, cat in zip(self.heads, self.categorical)]

    @torch.no_grad()
    def predict(self, x: Tensor, *, batch_size: int = 512, return_features: bool = False):
        """Predicted factors (N, K) float: class index for categorical factors, value in [0, 1]
        for ordinal ones. With return_features, also the features (N, feature_dim)."""
        was_training = self.training
        self.eval()
        preds, feats = [], []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            h = self.features(xb)
            cols = []
            for head, cat in zip(self.heads, self.categorical):
                o = head(h)
                cols.append(o.argmax(1).float() if cat else o.squeeze(1).clamp(0, 1))
            preds.append(torch.stack(cols, 1))
            feats.append(h)
        self.train(was_training)
        p = torch.cat(preds)
        return (p, torch.cat(feats)) if return_features else p

    def to_levels(self, pred: Tensor) -> Tensor:
        """Map predictions (N, K) to integer factor levels (N, K) int64."""
        sizes = torch.tensor(self.factor_sizes, dtype=pred.dtype, device=pred.device)
        cat = torch.tensor(self.categorical, device=pred.device)
        lv = torch.where(cat, pred, torch.round(pred * (sizes - 1)))
        return lv.long()


@dataclass(frozen=True)
class PredictorConfig:
    dataset: str = "sprites"
    size: int = 32
    n_train: int = 16000
    n_val: int = 2000
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 1234  # data seed distinct from the GAN's training set

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": _CACHE_VERSION}, sort_keys=True)
        return f"predictor-{self.dataset}-{self.size}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}.pt"


def _loss(model: FactorPredictor, outs, y: Tensor) -> Tensor:
    total = 0.0
    for j, (o, cat) in enumerate(zip(outs, model.categorical)):
        if cat:
            total = total + nn.functional.cross_entropy(o, y[:, j])
        else:
            target = y[:, j].float() / max(model.factor_sizes[j] - 1, 1)
            total = total + 0.2 * nn.functional.mse_loss(o, target)  # small: lets the shape head leave its plateau
    return total


def _validate(model: FactorPredictor, ds) -> dict:
    pred = model.predict(ds.images)
    out = {}
    for j, name in enumerate(model.factor_names):
        c = ds.factor_names.index(name)
        if model.categorical[j]:
            out[name] = {"accuracy": float((pred[:, j].long() == ds.factors[:, c]).float().mean())}
        else:
            from sklearn.metrics import r2_score

            t = ds.factor_values()[:, c]
            out[name] = {"r2": float(r2_score(t.double().numpy(), pred[:, j].double().numpy()))}
    return out


def fit_predictor(
    config: PredictorConfig = PredictorConfig(), *, progress: bool = True
) -> tuple[FactorPredictor, dict]:
    """Render labelled images and fit a FactorPredictor. Returns (model in eval mode, info dict
    with per-factor validation accuracy / R^2 and the fit time)."""
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {config.dataset!r}")
    t0 = time.perf_counter()
    ds = make_dataset(config.dataset, config.n_train, size=config.size, seed=config.seed)
    val = make_dataset(config.dataset, config.n_val, size=config.size, seed=config.seed + 1)
    cols = [ds.factor_names.index(n) for n in ds.measured()]
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = FactorPredictor(
            [ds.factor_sizes[c] for c in cols],
            [ds.categorical[c] for c in cols],
            size=config.size,
            factor_names=ds.measured(),
        )
    targets = ds.factors[:, cols]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = max(1, config.n_train // config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
    model.train()
    with tqdm(total=total, desc=f"factor predictor ({config.dataset})", disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            perm = torch.randperm(config.n_train, generator=gen)
            for s in range(steps_per_epoch):
                idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
                loss = _loss(model, model(ds.images[idx]), targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                if s % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    info = {
        "validation": _validate(model, val),
        "fit_seconds": time.perf_counter() - t0,
        "config": asdict(config),
        "factor_names": list(model.factor_names),
    }
    return model, info


def load_or_fit_predictor(
    config: PredictorConfig = PredictorConfig(), *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[FactorPredictor, dict]:
    """Load the predictor for `config` from the cache dir, or fit it and store it (atomically).
    An unwritable cache dir is not fatal: the fitted model is returned without being stored.
    info["cached"] says whether it came from disk."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / config.key()
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = FactorPredictor(
                blob["factor_sizes"], blob["categorical"], size=config.size, factor_names=blob["factor_names"]
            )
            model.load_state_dict(blob["state_dict"])
            model.eval()
            info = json.loads(blob["info"])
            info["cached"] = True
            info["path"] = str(path)
            return model, info
        except Exception:  # corrupt or stale cache entry: refit below
            pass
    model, info = fit_predictor(config, progress=progress)
    blob = {
        "state_dict": model.state_dict(),
        "factor_sizes": model.factor_sizes,
        "categorical": model.categorical,
        "factor_names": model.factor_names,
        "info": json.dumps(info),
    }
    try:
        atomic_save(blob, path)
        info["path"] = str(path)
    except OSError as exc:
        info["cache_error"] = str(exc)
    info["cached"] = False
    return model, info
