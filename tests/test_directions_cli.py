"""`spectral-ops directions`: end to end on a small generator, and one-line errors."""

import json

import pytest
import torch

from spectral_ops.lab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = ["--generator", "spectral_ops.lab.models:Generator"]


def test_writes_the_traversals_and_the_figures(tmp_path, capsys):
    out = tmp_path / "dirs"
    rc = main(
        [
            "directions",
            *SPEC,
            "--out",
            str(out),
            "--samples",
            "32",
            "--batch-size",
            "16",
            "--k",
            "3",
            "--columns",
            "5",
            "--stability",
        ]
    )
    assert rc == 0
    for name in ("directions.png", "axes.png", "directions.pt", "directions.json"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "directions.json").read_text())
    saved = torch.load(out / "directions.pt")
    V = saved["directions"]
    assert V.shape == (3, 10) and torch.allclose(V @ V.T, torch.eye(3), atol=1e-5)
    assert 0 < report["explained"][0] < report["explained"][-1] <= 1 + 1e-6
    assert report["stability_deg"] is not None and "directions explain" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--k", "0"], "--k"),
        (["--k", "11"], "--k must be <= latent dim 10"),
        (["--samples", "0"], "--samples"),
        (["--span", "-1"], "--span"),
        (["--columns", "1"], "--columns"),
        (["--tol", "nan"], "--tol"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, word):
    rc = main(["directions", *SPEC, "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and word in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["directions", "--ckpt", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "--ckpt" in capsys.readouterr().err


def test_the_commands_share_their_generator_helpers_by_public_names():
    """trace and directions take --ckpt / --generator, check G's output and the --out folder with
    the public helpers of spectral_ops.lab.cli.generators; no command module imports an
    underscore name from another module of the package (before: directions imported trace's
    _check_output and _writable_dir)."""
    import ast
    import pathlib

    import spectral_ops.lab.cli as cli

    folder = pathlib.Path(cli.__file__).parent
    private = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spectral_ops"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                if names:
                    private[path.name] = names
    assert not private
    from spectral_ops.lab.cli import directions, generators, trace

    for name in ("add_generator_arguments", "generator_from_args", "check_generator_output", "output_dir"):
        assert getattr(trace, name) is getattr(directions, name) is getattr(generators, name)
