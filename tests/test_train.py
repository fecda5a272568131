"""Trainer: bit-exact resume on CPU, atomic checkpoints and logs, 2-process DDP, CLI errors, faults
(a reused folder, a changed resume, bad checkpoints, a full disk, SIGINT, kill -9, divergence)."""

import contextlib
import dataclasses
import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from spectral_ops.lab.cli import main
from spectral_ops.lab.train import TRAIN_REGULARIZER, TrainConfig, build_models, load_checkpoint, load_generator, train
from spectral_ops.lab.train.losses import build_regularizer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_train=256, batch_size=16, width=8, latent_dim=6, log_every=2, ckpt_every=1000, r1_every=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("reg", ["none", "spectral"])
def test_resume_is_bit_exact(tmp_path, reg):
    extra = dict(reg=reg, reg_config=TRAIN_REGULARIZER.replace(every=2, k=2)) if reg != "none" else {}
    straight = train(TrainConfig(steps=8, out=str(tmp_path / "a"), **TINY, **extra), progress=False)
    train(TrainConfig(steps=4, out=str(tmp_path / "b"), **TINY, **extra), progress=False)
    resumed = train(
        TrainConfig(steps=8, out=str(tmp_path / "b"), **TINY, **extra),
        resume=tmp_path / "b" / "checkpoint.pt",
        progress=False,
    )
    assert _same(straight.G.state_dict(), resumed.G.state_dict())
    assert _same(straight.D.state_dict(), resumed.D.state_dict())
    assert _same(straight.G_train.state_dict(), resumed.G_train.state_dict())  # default: G is the EMA copy
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert torch.equal(a["rng"]["sampler"], b["rng"]["sampler"])
    if reg == "spectral":
        assert _same(a["reg"], b["reg"]) and int(a["reg"]["step"]) == 8
        assert any(r["reg"] > 0 for r in straight.history)
        # the log says what the regularizer's loss saw: its worst residual and active vectors
        solved = [r for r in straight.history if "reg_residual" in r]
        assert solved and all(0 <= r["reg_residual"] < 1 and 0 < r["reg_active"] <= 2 for r in solved)
    # the parameters did move
    fresh = train(TrainConfig(steps=0, out=str(tmp_path / "c"), **TINY, **extra), progress=False)
    assert not _same(fresh.G.state_dict(), straight.G.state_dict())


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_ema_generator_is_returned_checkpointed_and_resumed_exactly(tmp_path, ema):
    cfg = dict(TINY, ema=ema)
    straight = train(TrainConfig(steps=8, out=str(tmp_path / "a"), **cfg), progress=False)
    train(TrainConfig(steps=4, out=str(tmp_path / "b"), **cfg), progress=False)
    resumed = train(
        TrainConfig(steps=8, out=str(tmp_path / "b"), **cfg), resume=tmp_path / "b" / "checkpoint.pt", progress=False
    )
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
    from spectral_ops.lab.train import TRAIN_REGULARIZER, TrainConfig, train
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = sys.argv[1]
    for reg in ("none", "spectral"):
        cfg = TrainConfig(steps=4, out=os.path.join(out, reg), n_train=256, batch_size=16, width=8,
                          latent_dim=6, log_every=2, ckpt_every=1000, reg=reg,
                          reg_config=TRAIN_REGULARIZER.replace(every=2, k=2))
        res = train(cfg, progress=False)
        torch.save({"G": res.G.state_dict(), "G_train": res.G_train.state_dict(), "D": res.D.state_dict(),
                    "world": dist.get_world_size()},
                   os.path.join(out, f"{reg}-rank{rank}.pt"))
    dist.destroy_process_group()
""")


def test_ddp_two_processes_agree(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
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
    assert "reg_config: k must satisfy 1 <= k <= latent_dim=4" in capsys.readouterr().err
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


def test_seeds_torch_cannot_take_are_refused_and_the_largest_trains(tmp_path, capsys):
    """--seed and --data-seed beyond what a torch generator takes are a one-line error naming the
    field (previous main: "Overflow when unpacking long long" from the row sampler, or numpy's
    "Seed must be between 0 and 2**32 - 1"); the largest seed torch takes trains."""
    for flag in ("--seed", "--data-seed"):
        assert main(["train", "--steps", "1", flag, str(2**64), "--out", str(tmp_path / "x")]) == 2
        _one_line_error(capsys.readouterr().err, flag[2:].replace("-", "_") + " must be an int in")
    res = train(TrainConfig(steps=1, out=str(tmp_path / "big"), **{**TINY, "seed": 2**64 - 1}), progress=False)
    assert res.steps == 1


# ---- faults: a reused folder, a changed resume, bad checkpoints, a full disk, signals, divergence
def _cli(cfg: dict) -> list[str]:
    """TrainConfig keywords as `spectral-ops train` options."""
    return [a for k, v in cfg.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _values(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in log]


def _one_line_error(err: str, word: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err and word in lines[0], err


def test_fresh_run_into_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    """Before: a second fresh run into the same --out silently replaced the checkpoint and appended
    its lines to the first run's log."""
    out = tmp_path / "run"
    train(TrainConfig(steps=2, out=str(out), **TINY), progress=False)
    ckpt, log = (out / "checkpoint.pt").read_bytes(), (out / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run .*--overwrite"):
        train(TrainConfig(steps=2, out=str(out), **{**TINY, "seed": 1}), progress=False)
    assert main(["train", "--out", str(out), "--steps", "2", *_cli(TINY), "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "already holds a run")
    assert (out / "checkpoint.pt").read_bytes() == ckpt and (out / "log.jsonl").read_text() == log
    # a log alone (a run stopped before its first checkpoint) also counts
    (tmp_path / "logonly").mkdir()
    (tmp_path / "logonly" / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="log.jsonl"):
        train(TrainConfig(steps=2, out=str(tmp_path / "logonly"), **TINY), progress=False)
    # overwrite: the old run is replaced, not appended to
    res = train(TrainConfig(steps=4, out=str(out), **{**TINY, "seed": 1}), overwrite=True, progress=False)
    assert [r["step"] for r in _log(out)] == [2, 4] and load_checkpoint(out / "checkpoint.pt")["config"]["seed"] == 1
    assert main(["train", "--out", str(out), "--steps", "2", *_cli(TINY), "--no-progress", "--overwrite"]) == 0
    assert [r["step"] for r in _log(out)] == [2] and load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert res.steps == 4


def test_resume_refuses_changed_settings_and_applies_the_resumable_ones(tmp_path, capsys):
    """Before: `--resume --latent-dim 8 --reg spectral` silently went on with the checkpoint's
    latent size and regularizer (and the default --steps 2000)."""
    out = tmp_path / "b"
    assert main(["train", "--out", str(out), "--steps", "4", *_cli(TINY), "--no-progress"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert (
        main(["train", "--out", str(out), "--resume", "--latent-dim", "8", "--reg", "spectral", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    _one_line_error(err, "latent_dim: 6 -> 8")
    assert "reg: 'none' -> 'spectral'" in err and "steps" in err
    # the default of an option given explicitly is a change too
    assert main(["train", "--out", str(out), "--resume", "--width", "32", "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "width: 8 -> 32")
    with pytest.raises(ValueError, match="r1_every: 2 -> 4"):
        train(
            TrainConfig(steps=8, out=str(out), **{**TINY, "r1_every": 4}), resume=out / "checkpoint.pt", progress=False
        )
    assert (out / "checkpoint.pt").read_bytes() == before
    # steps (the total), log_every, ckpt_every may change: applied and reported; the rest comes from
    # the checkpoint without repeating it
    assert main(["train", "--out", str(out), "--resume", "--steps", "8", "--log-every", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "steps: 4 -> 8" in err and "log_every: 2 -> 4" in err
    straight = train(TrainConfig(steps=8, out=str(tmp_path / "a"), **TINY), progress=False)
    G, cfg = load_generator(out / "checkpoint.pt")
    assert cfg.latent_dim == 6 and cfg.steps == 8 and _same(G.state_dict(), straight.G.state_dict())
    assert [r["step"] for r in _log(out)] == [2, 4, 8]
    from spectral_ops.lab.train import resumed_config

    saved = TrainConfig(**TINY)
    assert resumed_config(saved, dataclasses.replace(saved, device="cpu", ckpt_every=3), 0) == dataclasses.replace(
        saved, device="cpu", ckpt_every=3
    )
    # a total below the checkpoint's step, or resuming into another run's folder, is refused
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "past steps=6")
    assert (
        main(
            [
                "train",
                "--resume",
                str(out / "checkpoint.pt"),
                "--out",
                str(tmp_path / "a"),
                "--steps",
                "9",
                "--no-progress",
            ]
        )
        == 2
    )
    _one_line_error(capsys.readouterr().err, "already holds a run")


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "foreign", "incomplete", "directory"])
def test_a_bad_checkpoint_is_a_one_line_error(tmp_path, capsys, kind):
    """Before: a truncated or random-bytes checkpoint given to --resume ended in torch's traceback
    (RuntimeError / UnpicklingError), an incomplete one in a KeyError."""
    good = tmp_path / "good"
    train(TrainConfig(steps=2, out=str(good), **TINY), progress=False)
    bad = tmp_path / "bad.pt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes((good / "checkpoint.pt").read_bytes()[:5000])
    elif kind == "random":
        bad.write_bytes(bytes(range(256)) * 40)
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3), "epoch": 7}, bad)
    elif kind == "incomplete":
        blob = load_checkpoint(good / "checkpoint.pt")
        del blob["opt_G"]
        torch.save(blob, bad)
    else:
        bad.mkdir()
    with pytest.raises(ValueError):
        load_checkpoint(bad)
    rc = main(["train", "--resume", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "resume:")


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """Before: OSError(ENOSPC) from the checkpoint write ended the CLI in a traceback."""
    import errno

    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) >= 2:  # the first checkpoint fits, the second does not
            with open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    rc = main(["train", "--out", str(out), "--steps", "6", *_cli({**TINY, "ckpt_every": 2}), "--no-progress"])
    monkeypatch.setattr(torch, "save", real_save)
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "No space left on device")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl"]  # no *.tmp, no train.json
    # and it resumes from the checkpoint that was kept
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    straight = train(TrainConfig(steps=6, out=str(tmp_path / "a"), **{**TINY, "ckpt_every": 2}), progress=False)
    assert _same(load_generator(out / "checkpoint.pt")[0].state_dict(), straight.G.state_dict())
    assert _values(_log(out)) == _values(straight.history)


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


def _wait_for_log(proc, log: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no progress in the log")


def test_sigint_saves_the_current_step_and_resumes_exactly(tmp_path):
    """Before: Ctrl-C printed a KeyboardInterrupt traceback and lost every step since the last
    checkpoint (here: all of them, there was none)."""
    out = tmp_path / "run"
    cfg = {**TINY, "log_every": 1}
    cmd = [
        sys.executable,
        "-m",
        "spectral_ops.lab.cli",
        "train",
        "--out",
        str(out),
        "--steps",
        "100000",
        *_cli(cfg),
        "--threads",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_log(proc, out / "log.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _one_line_error(err, "--resume")
    assert str(out / "checkpoint.pt") in err
    k = load_checkpoint(out / "checkpoint.pt")["step"]
    assert k >= 3 and [r["step"] for r in _log(out)] == list(range(1, k + 1))  # no step lost, none ahead
    resumed = train(TrainConfig(steps=k + 3, out=str(out), **cfg), resume=out / "checkpoint.pt", progress=False)
    straight = train(TrainConfig(steps=k + 3, out=str(tmp_path / "a"), **cfg), progress=False)
    assert _same(straight.G.state_dict(), resumed.G.state_dict())
    assert _same(straight.D.state_dict(), resumed.D.state_dict())
    assert _same(straight.G_train.state_dict(), resumed.G_train.state_dict())
    assert _values(_log(out)) == _values(_log(tmp_path / "a"))


def test_an_interrupt_between_log_lines_resumes_the_log_exactly(tmp_path, monkeypatch):
    """An interrupt at step 5 with --log-every 2: the checkpoint keeps the half-filled log means,
    so the resumed log equals a straight run's. Before: there was no interrupt checkpoint."""
    import spectral_ops.lab.train.loop as T

    real, calls = T._ema_update, []

    def ema_then_signal(*a):
        real(*a)
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(T, "_ema_update", ema_then_signal)
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(T.TrainingInterrupted) as exc:
        train(TrainConfig(steps=10, out=str(out), **TINY), progress=False)
    assert exc.value.step == 5 and exc.value.checkpoint == str(out / "checkpoint.pt")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5 and not (out / "train.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    monkeypatch.setattr(T, "_ema_update", real)
    resumed = train(TrainConfig(steps=10, out=str(out), **TINY), resume=out / "checkpoint.pt", progress=False)
    straight = train(TrainConfig(steps=10, out=str(tmp_path / "a"), **TINY), progress=False)
    assert _same(straight.G.state_dict(), resumed.G.state_dict())
    assert _values(_log(out)) == _values(_log(tmp_path / "a"))


_HANG_AT_STEP_7 = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    import spectral_ops.lab.train.loop as T

    class Bar(T.tqdm):
        done = 0

        def update(self, n=1):
            super().update(n)
            Bar.done += n
            if Bar.done == 7:  # the log has step 7, the checkpoint step 5: now kill -9 arrives
                time.sleep(600)

    T.tqdm = Bar
    cfg = dict(n_train=256, batch_size=16, width=8, latent_dim=6, log_every=1, ckpt_every=5, r1_every=2)
    T.train(T.TrainConfig(steps=100, out=sys.argv[1], **cfg), progress=False)
""")


def test_after_kill_9_the_resumed_log_has_every_step_once(tmp_path):
    """Before: the log ran ahead of the checkpoint (steps 6, 7 after a checkpoint at 5), and the
    resumed run logged them again."""
    out = tmp_path / "run"
    script = tmp_path / "hang.py"
    script.write_text(_HANG_AT_STEP_7)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_log(proc, out / "log.jsonl", 7)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5 and len(_log(out)) == 7
    cfg = {**TINY, "log_every": 1, "ckpt_every": 5}
    assert main(["train", "--out", str(out), "--resume", "--steps", "10", "--no-progress"]) == 0
    straight = train(TrainConfig(steps=10, out=str(tmp_path / "a"), **cfg), progress=False)
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 11))
    assert _values(log) == _values(straight.history)
    assert _same(load_generator(out / "checkpoint.pt")[0].state_dict(), straight.G.state_dict())


@pytest.mark.parametrize("poison_at, caught_at, what", [(5, 6, "loss_D = nan"), (8, 8, "is not finite")])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys, poison_at, caught_at, what
):
    """NaN weights after step 5 (caught by the losses of step 6) or after the last step (caught
    before the final save). Before: the run went on, saved NaN checkpoints and exited 0."""
    import spectral_ops.lab.train.loop as T

    real, calls = T._ema_update, []

    def ema_then_poison(G_ema, G, beta):
        real(G_ema, G, beta)
        calls.append(1)
        if len(calls) == poison_at:
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))

    monkeypatch.setattr(T, "_ema_update", ema_then_poison)
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--steps", "8", *_cli({**TINY, "ckpt_every": 2}), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    _one_line_error(err, "diverged")
    assert what in err and f"step {caught_at}" in err and str(out / "checkpoint.pt") in err
    blob = load_checkpoint(out / "checkpoint.pt")
    assert blob["step"] == (4 if poison_at == 5 else 6) and f"(step {blob['step']})" in err
    assert all(torch.isfinite(v).all() for v in blob["G"].values() if v.is_floating_point())
    assert not (out / "train.json").exists()


def test_a_huge_learning_rate_diverges_with_exit_1(tmp_path, capsys):
    """Before: NaN losses were logged and a NaN checkpoint saved, exit 0."""
    rc = main(
        [
            "train",
            "--out",
            str(tmp_path / "r"),
            "--steps",
            "20",
            *_cli(TINY),
            "--lr-g",
            "1e30",
            "--lr-d",
            "1e30",
            "--no-progress",
        ]
    )
    assert rc == 1
    _one_line_error(capsys.readouterr().err, "training diverged at step")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# ---- a real full disk (the write itself fails), a resume with nothing left to do ---------------
def _full_disk(monkeypatch, free: int) -> None:
    """Make every file the atomic writers open (os.fdopen for writing) after the first one share
    `free` bytes of disk: a write past them raises OSError(ENOSPC) from the file, as a full disk
    does (torch.save then meets it inside its zip writer, not around it)."""
    real, opened, used = os.fdopen, [], [0]

    class Disk(io.FileIO):
        def write(self, b):
            n = memoryview(b).nbytes
            if len(opened) > 1 and used[0] + n > free:
                raise OSError(errno.ENOSPC, "No space left on device")
            used[0] += n if len(opened) > 1 else 0
            return super().write(b)

    def fdopen(fd, mode="r", *args, **kwargs):
        if "w" not in mode:
            return real(fd, mode, *args, **kwargs)
        opened.append(fd)
        return io.BufferedWriter(Disk(fd, "wb"))

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_a_full_disk_inside_the_checkpoint_write_is_a_one_line_error_also_on_resume(tmp_path, capsys, monkeypatch):
    """Before: ENOSPC raised by the file inside torch.save came out as torch's RuntimeError
    ('[enforce fail at inline_container.cc] . unexpected pos ...'): a traceback and exit 1, the
    status --help gives to a diverged run (seen on a 300 KB tmpfs as well)."""
    out = tmp_path / "run"
    _full_disk(monkeypatch, free=4096)  # the first checkpoint (step 2) fits, the second does not
    rc = main(["train", "--out", str(out), "--steps", "6", *_cli({**TINY, "ckpt_every": 2}), "--no-progress"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "No space left on device")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl"]  # no *.tmp, no train.json
    # on --resume the disk is still full: the same one line, the checkpoint still at step 2
    rc = main(["train", "--out", str(out), "--resume", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    _one_line_error(err, "No space left on device")
    assert "checkpoint.pt" in err or "log.jsonl" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6


def test_resume_at_the_final_step_leaves_the_run_untouched(tmp_path, capsys):
    """Before: `--resume --steps N` with the run already at step N exited 0 after rewriting
    checkpoint.pt and train.json, the latter with "last": null."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "4", *_cli(TINY), "--no-progress"]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(files["train.json"])["last"] is not None
    capsys.readouterr()
    for argv in (["--resume"], ["--resume", "--steps", "4"], ["--resume", str(out / "checkpoint.pt"), "--steps", "4"]):
        assert main(["train", "--out", str(out), *argv, "--no-progress"]) == 0
        captured = capsys.readouterr()
        lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
        assert len(lines) == 1 and "already at step 4" in lines[0] and "nothing written" in lines[0], lines
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    # in Python: the run's state, nothing written
    res = train(TrainConfig(steps=4, out=str(out), **TINY), resume=out / "checkpoint.pt", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert res.steps == 4 and res.history == [] and res.checkpoint == str(out / "checkpoint.pt")
    assert _same(res.G.state_dict(), load_generator(out / "checkpoint.pt")[0].state_dict())
    # into another folder: nothing is written there either
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), "--resume", str(out / "checkpoint.pt"), "--no-progress"]) == 0
    assert not other.exists()


@pytest.mark.parametrize("reg", ["spectral", "hessian", "jacobian_l1", "path_length"])
def test_a_diverging_regularized_run_is_exit_1_not_a_regularizer_error(tmp_path, monkeypatch, capsys, reg):
    """NaN weights after step 3 with a regularizer on. Before: the regularizer's ValueError on the
    NaN G(z) ('G(z) has non-finite values ...') ended the run with exit 2, the status --help gives to
    bad arguments, instead of the divergence report and exit 1 (spectral on the previous main; the
    peers since they name non-finite rows instead of returning NaN)."""
    import spectral_ops.lab.train.loop as T

    real, calls = T._ema_update, []

    def ema_then_poison(G_ema, G, beta):
        real(G_ema, G, beta)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))

    monkeypatch.setattr(T, "_ema_update", ema_then_poison)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "6",
            *_cli({**TINY, "ckpt_every": 2}),
            "--reg",
            reg,
            "--reg-every",
            "1",
            "--reg-k",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    _one_line_error(err, "training diverged at step 4")
    assert "reg = nan (generator's regularizer)" in err and "(step 2)" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2


def test_local_and_global_regularizer_schedule_and_value():
    """--reg-global: on the local regularizer's computed calls the value is the local one plus
    weight * every * the global term on round(batch_fraction * B) rows; a zero on the others."""
    from spectral_ops import SpectralRegularizer
    from spectral_ops.directions import global_alignment_penalty
    from spectral_ops.lab.train.losses import LocalAndGlobal

    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 20)).double()
    z = torch.randn(8, 6, dtype=torch.float64)
    combined = LocalAndGlobal(SpectralRegularizer(6, every=2, batch_fraction=0.5, seed=1), 0.7, 0.5)
    alone = SpectralRegularizer(6, every=2, batch_fraction=0.5, seed=1)
    first = combined(G, z)
    expected = alone(G, z) + 0.7 * 2 * global_alignment_penalty(G, z[:4])
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=0)
    assert combined.last_active is not None and combined.last_worst_residual is not None
    skipped = combined(G, z)
    assert float(skipped) == 0.0 and skipped.grad_fn is None
    config = TrainConfig(reg="spectral", reg_global=1.0, latent_dim=6)
    assert isinstance(build_regularizer(config), LocalAndGlobal)
    assert not isinstance(build_regularizer(dataclasses.replace(config, reg_global=0.0)), LocalAndGlobal)
    with pytest.raises(ValueError, match="reg_global"):
        TrainConfig(reg_global=-1.0).validate()
