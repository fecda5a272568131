"""`spectral-ops trace`: end to end on small generators, and clear errors for bad arguments."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from PIL import Image

from spectral_ops.lab.cli import main


def plain_function(z):
    """A plain function generator (no latent_dim attribute): 3-D latents -> 16-vectors (4x4)."""
    w = torch.linspace(-1, 1, 16, dtype=z.dtype)
    return torch.tanh(z[:, :1] * w + z[:, 1:2] * w**2 + z[:, 2:3])


def returns_a_tuple(z):
    """A function of the latents that returns (images, extras), not a tensor."""
    return plain_function(z), z


def integer_output(z):
    return (z > 0).long()


class NeedsArguments(torch.nn.Module):
    """A generator class whose constructor needs an argument."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, z):
        return plain_function(z)


CALLS = []


def make_generator():
    """A zero-argument factory: only `tests.test_trace_cli:make_generator()` calls it."""
    CALLS.append(1)
    return plain_function


def make_nothing():
    return 3


NOT_A_GENERATOR = 3


def test_trace_with_a_model_class(tmp_path):
    """A class given as --generator is built with no arguments; latent_dim comes from it."""
    torch.manual_seed(0)
    out = tmp_path / "trace"
    rc = main(
        [
            "trace",
            "--generator",
            "spectral_ops.lab.models:Generator",
            "--out",
            str(out),
            "--directions",
            "1",
            "--steps",
            "1",
            "--step-size",
            "0.5",
            "--columns",
            "3",
            "--n",
            "1",
            "--scale",
            "1",
            "--method",
            "euler",
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "sample0_axes.png",
        "sample0_curves.png",
        "sample0_lines.png",
        "sample0_values_dir0.png",
        "trace.json",
        "trajectories.pt",
    ]
    grid = Image.open(out / "sample0_curves.png")
    assert grid.size[1] == 32 + 2 + 2  # one row of 32-pixel images
    rec = torch.load(out / "trajectories.pt", weights_only=False)
    assert len(rec["trajectories"]) == 1 and rec["trajectories"][0]["z"].shape == (3, 10)
    settings = json.loads((out / "trace.json").read_text())
    assert settings["latent_dim"] == 10 and settings["span"] == 0.5


def test_trace_with_a_function_needs_latent_dim(tmp_path, capsys):
    spec = "tests.test_trace_cli:plain_function"
    rc = main(["trace", "--generator", spec, "--out", str(tmp_path / "a")])
    assert rc == 2 and "--latent-dim" in capsys.readouterr().err
    rc = main(
        [
            "trace",
            "--generator",
            spec,
            "--latent-dim",
            "3",
            "--out",
            str(tmp_path / "b"),
            "--directions",
            "0,2",
            "--steps",
            "3",
            "--step-size",
            "0.2",
            "--columns",
            "4",
            "--n",
            "2",
            "--method",
            "heun",
        ]
    )
    assert rc == 0
    assert Image.open(tmp_path / "b" / "sample1_axes.png").size[1] == 2 * (4 * 2 + 2) + 2


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--generator", "nosuchmodule_xyz:G", "--latent-dim", "3"], "cannot import"),
        (["--generator", "tests.test_trace_cli:missing", "--latent-dim", "3"], "no attribute"),
        (["--generator", "tests_test_trace_cli_no_colon"], "package.module:attr"),
        (
            ["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--directions", "5"],
            "--directions",
        ),
        (
            ["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--directions", "a,b"],
            "--directions",
        ),
        (["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--steps", "0"], "--steps"),
        (
            ["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--step-size", "-1"],
            "--step-size",
        ),
        (["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--columns", "1"], "--columns"),
        (["--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "0"], "--latent-dim"),
        (["--ckpt", "/nonexistent/ckpt.pt"], "--ckpt"),
    ],
)
def test_bad_arguments(tmp_path, capsys, argv, word):
    rc = main(["trace", *argv, "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert word in err, err


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="permissions are not enforced for root")
def test_unwritable_out_dir(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = main(
            [
                "trace",
                "--generator",
                "tests.test_trace_cli:plain_function",
                "--latent-dim",
                "3",
                "--out",
                str(ro / "sub"),
            ]
        )
    finally:
        ro.chmod(0o700)
    assert rc == 2 and "--out" in capsys.readouterr().err


def test_unwritable_out_path_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["trace", "--generator", "tests.test_trace_cli:plain_function", "--latent-dim", "3", "--out", str(f)])
    assert rc == 2 and "--out" in capsys.readouterr().err


def test_missing_source_is_an_argparse_error():
    with pytest.raises(SystemExit):
        main(["trace", "--out", "x"])


_QUICK = [
    "--latent-dim",
    "3",
    "--directions",
    "1",
    "--steps",
    "1",
    "--columns",
    "2",
    "--n",
    "1",
    "--scale",
    "1",
    "--method",
    "euler",
]


def test_a_zero_argument_function_is_not_called_to_see_what_it_is(tmp_path, capsys):
    """MODULE:fn is the generator itself; MODULE:fn() calls a factory. Before: the CLI called any
    zero-argument function it was given to find out whether it was a factory."""
    import importlib

    calls = importlib.import_module("tests.test_trace_cli").CALLS  # the module --generator imports
    calls.clear()
    rc = main(["trace", "--generator", "tests.test_trace_cli:make_generator", *_QUICK, "--out", str(tmp_path / "a")])
    assert rc == 2 and calls == []
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tests.test_trace_cli:make_generator()" in err, err
    rc = main(["trace", "--generator", "tests.test_trace_cli:make_generator()", *_QUICK, "--out", str(tmp_path / "b")])
    assert rc == 0 and calls == [1]
    assert (tmp_path / "b" / "trace.json").is_file()


@pytest.mark.parametrize(
    "spec, word",
    [
        ("tests.test_trace_cli:returns_a_tuple", "got a tuple"),
        ("tests.test_trace_cli:integer_output", "floating tensor"),
        ("tests.test_trace_cli:NeedsArguments", "could not be called with no arguments"),
        ("tests.test_trace_cli:NOT_A_GENERATOR", "NOT_A_GENERATOR"),  # (already an error before)
        ("tests.test_trace_cli:make_nothing()", "returned 3 (int)"),
        ("tests.test_trace_cli:plain_function(3)", "package.module:factory()"),
    ],
)
def test_a_bad_generator_is_a_one_line_error(tmp_path, capsys, spec, word):
    """Before: a generator returning a tuple or an integer tensor, or a class whose constructor
    needs arguments, ended in a traceback (AttributeError, ValueError, TypeError); `fn()` was
    read as an attribute name."""
    rc = main(["trace", "--generator", spec, *_QUICK, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert word in err, err
