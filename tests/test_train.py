"""Trainer: bit-exact resume on CPU, atomic checkpoints and logs, 2-process DDP, CLI errors."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spectral_ops.cli import main
from spectral_ops.train import TrainConfig, build_models, load_checkpoint, load_generator, train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_train=256, batch_size=16, width=8, latent_dim=6, log_every=2, ckpt_every=1000, r1_every=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("reg", ["none", "spectral"])
def test_resume_is_bit_exact(tmp_path, reg):
    extra = dict(reg=reg, reg_every=2, reg_k=2) if reg != "none" else {}
    straight = train(TrainConfig(steps=8, out=str(tmp_path / "a"), **TINY, **extra), progress=False)
    train(TrainConfig(steps=4, out=str(tmp_path / "b"), **TINY, **extra), progress=False)
    resumed = train(TrainConfig(steps=8, out=str(tmp_path / "b"), **TINY, **extra),
                    resume=tmp_path / "b" / "checkpoint.pt", progress=False)
    assert _same(straight.G.state_dict(), resumed.G.state_dict())
    assert _same(straight.D.state_dict(), resumed.D.state_dict())
    assert _same(straight.G_train.state_dict(), resumed.G_train.state_dict())  # default: G is the EMA copy
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert torch.equal(a["rng"]["sampler"], b["rng"]["sampler"])
    if reg == "spectral":
        assert _same(a["reg"], b["reg"]) and int(a["reg"]["step"]) == 8
        assert any(r["reg"] > 0 for r in straight.history)
    # the parameters did move
    fresh = train(TrainConfig(steps=0, out=str(tmp_path / "c"), **TINY, **extra), progress=False)
    assert not _same(fresh.G.state_dict(), straight.G.state_dict())


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_ema_generator_is_returned_checkpointed_and_resumed_exactly(tmp_path, ema):
    cfg = dict(TINY, ema=ema)
    straight = train(TrainConfig(steps=8, out=str(tmp_path / "a"), **cfg), progress=False)
    train(TrainConfig(steps=4, out=str(tmp_path / "b"), **cfg), progress=False)
    resumed = train(TrainConfig(steps=8, out=str(tmp_path / "b"), **cfg), resume=tmp_path / "b" / "checkpoint.pt",
                    progress=False)
    blob = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    G, _ = load_generator(tmp_path / "a" / "checkpoint.pt")
    assert _same(G.state_dict(), straight.G.state_dict()) and not G.training
    if ema == 0:
        assert straight.G_train is None and blob["G_ema"] is None
        assert _same(blob["G"], straight.G.state_dict())
        return
    # G is the average, G_train the trained weights: they differ, and both resume bit for bit
    assert _same(blob["G_ema"], straight.G.state_dict()) and _same(blob["G"], straight.G_train.state_dict())
    assert not _same(straight.G.state_dict(), straight.G_train.state_dict())
    assert _same(straight.G.state_dict(), resumed.G.state_dict())
    assert _same(straight.G_train.state_dict(), resumed.G_train.state_dict())
    # the average lies between the initial and the trained weights (it moved, but lags)
    init = train(TrainConfig(steps=0, out=str(tmp_path / "c"), **cfg), progress=False).G_train.state_dict()
    k = "fc.weight"
    assert 0 < (straight.G.state_dict()[k] - init[k]).norm() < (straight.G_train.state_dict()[k] - init[k]).norm()


def test_d_width_sets_the_discriminator_only():
    G, D = build_models(TrainConfig(width=8))
    G2, D2 = build_models(TrainConfig(width=8, d_width=32))
    assert [p.shape for p in G.parameters()] == [p.shape for p in G2.parameters()]
    assert D.net[0].out_channels == 8 and D2.net[0].out_channels == 16
    with pytest.raises(ValueError, match="d_width"):
        TrainConfig(d_width=-1).validate()


def test_outputs_are_written_atomically(tmp_path):
    out = tmp_path / "run"
    res = train(TrainConfig(steps=4, out=str(out), **{**TINY, "ckpt_every": 2}), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl", "train.json"]
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4] and all(set(r) >= {"loss_D", "loss_G", "r1", "reg"} for r in lines)
    assert json.loads((out / "train.json").read_text())["steps"] == 4
    G, cfg = load_generator(out / "checkpoint.pt")
    assert cfg.latent_dim == 6 and _same(G.state_dict(), res.G.state_dict())
    with pytest.raises(ValueError, match="resume"):
        train(TrainConfig(steps=4, out=str(out), **TINY), resume=out / "missing.pt", progress=False)


_DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from spectral_ops.train import TrainConfig, train
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = sys.argv[1]
    for reg in ("none", "spectral"):
        cfg = TrainConfig(steps=4, out=os.path.join(out, reg), n_train=256, batch_size=16, width=8,
                          latent_dim=6, log_every=2, ckpt_every=1000, reg=reg, reg_every=2, reg_k=2)
        res = train(cfg, progress=False)
        torch.save({"G": res.G.state_dict(), "G_train": res.G_train.state_dict(), "D": res.D.state_dict(),
                    "world": dist.get_world_size()},
                   os.path.join(out, f"{reg}-rank{rank}.pt"))
    dist.destroy_process_group()
""")


def test_ddp_two_processes_agree(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for reg in ("none", "spectral"):
        r0 = torch.load(tmp_path / f"{reg}-rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{reg}-rank1.pt", weights_only=True)
        assert r0["world"] == 2
        assert _same(r0["G"], r1["G"]) and _same(r0["D"], r1["D"]) and _same(r0["G_train"], r1["G_train"])
        ckpt = load_checkpoint(tmp_path / reg / "checkpoint.pt")
        assert ckpt["world"] == 2 and len(ckpt["rng"]) == 2
        # each rank drew its own batches
        assert not torch.equal(ckpt["rng"][0]["sampler"], ckpt["rng"][1]["sampler"])
        # the EMA generator (the default) is what train returns as G; the trained one is also saved
        assert _same(ckpt["G_ema"], r0["G"]) and _same(ckpt["G"], r0["G_train"])


def test_cli_bad_arguments(tmp_path, capsys):
    assert main(["train", "--steps", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "steps must be" in capsys.readouterr().err
    assert main(["train", "--reg-k", "20", "--latent-dim", "4", "--out", str(tmp_path / "x")]) == 2
    assert "reg_k" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--steps", "1", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "y")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--ema", "1.0", "--out", str(tmp_path / "x")]) == 2
    assert "ema must" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--reg", "bogus"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
