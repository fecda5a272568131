"""CLI faults: bad arguments and bad checkpoints are one-line errors with exit 2, Ctrl-C is exit 130;
never a traceback."""

import json

import pytest
import torch

from spectral_ops.lab.cli import main
from spectral_ops.lab.train import TrainConfig, train

TINY = dict(n_train=256, batch_size=16, width=8, latent_dim=6, log_every=2, ckpt_every=1000, r1_every=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(err: str, word: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err and word in lines[0], err


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--tol", "-1"], "--tol"),
        (["--tol", "nan"], "--tol"),
        (["--iters", "0"], "--iters"),
        (["--batch", "0"], "--batch"),
        (["-k", "9", "--latent-dim", "4"], "-k (9)"),
    ],
)
def test_topk_bad_arguments(capsys, argv, word):
    """Before: --tol -1 ended in power.py's ValueError traceback; --iters 0 and friends raised
    SystemExit with exit status 1."""
    assert main(["topk", "--batch", "2", "--latent-dim", "4", "--iters", "2", *argv]) == 2
    _one_line(capsys.readouterr().err, word)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt")
    train(TrainConfig(steps=2, out=str(out), **TINY), progress=False)
    torch.set_num_threads(prev)
    return out / "checkpoint.pt"


def _bad_file(path, kind, checkpoint):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(checkpoint.read_bytes()[:3000])
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 40)
    else:  # a pickle of another program's objects
        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "pickle"])
@pytest.mark.parametrize("command", ["trace", "eval"])
def test_a_bad_checkpoint_for_trace_and_eval(tmp_path, capsys, checkpoint, command, kind):
    """Before: random bytes or a pickle of other classes printed torch's several-line
    'Weights only load failed ...' message."""
    bad = _bad_file(tmp_path / "bad.pt", kind, checkpoint)
    argv = ["trace", "--ckpt", str(bad)] if command == "trace" else ["eval", "--ckpt", str(bad)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys.readouterr().err, "--ckpt")


def test_ctrl_c_in_any_command_is_exit_130(capsys, monkeypatch):
    """Before: a KeyboardInterrupt traceback."""
    import spectral_ops.lab.cli.topk as topk

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(topk, "jacobian_topk", interrupted)
    assert main(["topk", "--batch", "2", "--latent-dim", "4", "--iters", "2"]) == 130
    _one_line(capsys.readouterr().err, "interrupted")


def test_the_demo_trains_again_into_its_own_folders(tmp_path):
    """The demo is rerun into runs/demo: its runs replace their previous selves (a fresh run into
    a folder holding one is refused elsewhere)."""
    import dataclasses

    from spectral_ops.lab.demo import _train_all

    base = TrainConfig(steps=2, **TINY)
    runs = {n: dataclasses.replace(base, out=str(tmp_path / n), seed=i) for i, n in enumerate(("baseline", "spectral"))}
    first = _train_all(runs, jobs=1, progress=False)
    second = _train_all(runs, jobs=1, progress=False)
    assert first.keys() == second.keys() == runs.keys()
    assert [json.loads(x)["step"] for x in (tmp_path / "baseline" / "log.jsonl").read_text().splitlines()] == [2]


# ---------------------------------------------------------------- seeds (topk, trace, directions)


@pytest.mark.parametrize("seed", [str(2**64), str(-(2**70))])
@pytest.mark.parametrize("command", ["topk", "trace", "directions"])
def test_a_seed_a_generator_cannot_take_is_one_line_naming_seed(tmp_path, capsys, command, seed):
    """Seeds outside [-2**63, 2**64 - 1]: exit 2 and one line naming --seed.  Before: topk and
    directions printed torch's "Overflow when unpacking long long"; trace raised it as a traceback."""
    source = (
        [] if command == "topk" else ["--generator", "spectral_ops.lab.models:Generator", "--out", str(tmp_path / "o")]
    )
    assert main([command, *source, f"--seed={seed}"]) == 2
    err = capsys.readouterr().err
    _one_line(err, "--seed must be an int in [-2**63, 2**64 - 1]")
    assert seed in err


def test_topk_takes_the_largest_seed(capsys):
    """2**64 - 1 is a seed torch takes: the command runs."""
    assert main(["topk", "--batch", "2", "--latent-dim", "4", "--iters", "2", f"--seed={2**64 - 1}"]) == 0


# ---- train and eval: a generator with NaN weights in eval ---------------------------------------
def _nan_weights(checkpoint, path):
    """The checkpoint with every floating weight of its generators set to NaN."""
    blob = torch.load(checkpoint, weights_only=True)
    for key in ("G", "G_ema"):
        for v in (blob.get(key) or {}).values():
            if v.is_floating_point():
                v.fill_(float("nan"))
    torch.save(blob, path)
    return path


def test_eval_on_nan_weights_says_g_of_z_is_not_finite(tmp_path, capsys, checkpoint, monkeypatch):
    """Before: 'factors contains non-finite values' (from the metrics, after the factor predictor
    was loaded or fitted), where trace and directions say 'G(z) has non-finite values'."""
    import spectral_ops.lab.cli.eval as eval_cli

    def no_predictor(*a, **kw):
        raise ValueError("the factor predictor was reached")

    monkeypatch.setattr(eval_cli, "load_or_fit_predictor", no_predictor)
    bad = _nan_weights(checkpoint, tmp_path / "nan.pt")
    assert main(["eval", "--ckpt", str(bad), "--out", str(tmp_path / "o"), "--n-samples", "100", "--no-progress"]) == 2
    _one_line(
        capsys.readouterr().err, "G(z) has non-finite values (NaN or Inf) in rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]"
    )


def test_evaluate_generator_names_non_finite_rows_before_measuring():
    """Before: a G with NaN rows reached the predictor and the metrics (here: an AttributeError
    on the absent predictor; with a real one, 'factors contains non-finite values')."""
    from spectral_ops.lab.evaluate import evaluate_generator

    class Holes(torch.nn.Module):
        """Images [N, 1, 4, 4] of 0.5, NaN in the rows whose latent's first entry is below -1."""

        latent_dim = 3

        def forward(self, z):
            img = torch.full((z.shape[0], 1, 4, 4), 0.5)
            return torch.where((z[:, :1] < -1)[:, :, None, None], torch.nan, img)

    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(7))  # the evaluation's latents
    rows = ", ".join(map(str, (z[:, 0] < -1).nonzero().flatten().tolist()[:10]))
    assert rows
    with pytest.raises(ValueError, match=rf"G\(z\) has non-finite values \(NaN or Inf\) in rows \[{rows}"):
        evaluate_generator(Holes(), dataset="spot", size=32, predictor=object(), n=50, seed=7)
    from spectral_ops.lab.evaluate import check_outputs  # the eval command's check before the predictor

    with pytest.raises(ValueError, match=rf"in rows \[{rows}"):
        check_outputs(Holes(), n=50, seed=7)
