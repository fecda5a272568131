"""`spectral-ops demo` end to end on a tiny configuration; CLI errors of demo and eval."""

import json
import math

import pytest
import torch
from PIL import Image

from spectral_ops.lab.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--out", str(root / "out"), "--cache-dir", str(root / "cache"), "--no-progress"])
    torch.set_num_threads(prev)
    return rc, root


def test_quick_demo_runs_end_to_end(quick_demo, capsys):
    rc, root = quick_demo
    assert rc == 0
    out = root / "out"
    blob = json.loads((out / "metrics.json").read_text())
    assert set(blob["results"]) == {"baseline", "spectral"}
    for name, r in blob["results"].items():
        assert 0 <= r["mig"] <= 1 and 0 <= r["dci_disentanglement"] <= 1
        assert r["frechet_distance"] >= 0 and len(r["activeness"]["per_dim"]) == 6
        assert r["frechet_ratio"] > 0 and isinstance(r["axis_alignment"], dict)
        assert (out / name / "checkpoint.pt").is_file()
    assert blob["configs"]["spectral"]["reg"] == "spectral" and blob["configs"]["baseline"]["reg"] == "none"
    assert "MIG" in blob["table"] and "baseline" in blob["table"]
    assert set(blob["reference"]) == {"ceiling (oracle)", "floor (rotated oracle)"}
    assert "ceiling (oracle)" in blob["table"] and "floor (rotated oracle)" in blob["table"]
    img = Image.open(out / "traversals.png")
    assert img.format == "PNG" and img.height > 6 * 64  # six rows of 2x-upscaled 32x32 tiles
    assert "traversals.png" in blob["pictures"]
    # the predictor was cached
    assert any(p.name.startswith("predictor-spot-32") for p in (root / "cache").iterdir())
    # the regularizer ran in the spectral run (and only there): its logged penalty is positive
    logs = {
        name: [json.loads(line) for line in (out / name / "log.jsonl").read_text().splitlines()]
        for name in ("baseline", "spectral")
    }
    assert logs["spectral"] and all(row["reg"] > 0 for row in logs["spectral"])
    assert all(row["reg"] == 0 for row in logs["baseline"])
    # ... and its gradient reached the generator: both runs start from the same seed and see the
    # same batches, so without it the two generators come out equal
    G = {
        name: torch.load(out / name / "checkpoint.pt", map_location="cpu", weights_only=False)["G"]
        for name in ("baseline", "spectral")
    }
    assert G["baseline"].keys() == G["spectral"].keys()
    assert any(not torch.equal(G["baseline"][key], G["spectral"][key]) for key in G["baseline"])


def test_eval_on_demo_checkpoint_bad_and_good_arguments(quick_demo, capsys, tmp_path):
    rc, root = quick_demo
    assert main(["eval", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["eval", "--ckpt", str(junk)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(root / "out" / "baseline" / "checkpoint.pt"), "--n-samples", "5"]) == 2
    assert "--n-samples" in capsys.readouterr().err
    # and one that succeeds.  eval fits (and caches) the full factor predictor, not the demo's
    # --quick one, so its numbers are not the demo's; they are checked against the same evaluation
    # run here on the loaded checkpoint.
    ckpt = root / "out" / "spectral" / "checkpoint.pt"
    dest = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--ckpt",
            str(ckpt),
            "--n-samples",
            "300",
            "--seed",
            "0",
            "--out",
            str(dest),
            "--cache-dir",
            str(root / "cache"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "MIG" in out, out
    res = json.loads((dest / "eval.json").read_text())
    assert res["checkpoint"] == str(ckpt)
    for key in ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert math.isfinite(res[key]) and 0 <= res[key] <= 1, (key, res[key])
    assert math.isfinite(res["frechet_distance"]) and res["frechet_distance"] > 0
    assert math.isfinite(res["frechet_ratio"]) and res["frechet_ratio"] > 0
    assert len(res["activeness"]["per_dim"]) == 6 and all(math.isfinite(a) for a in res["activeness"]["per_dim"])
    assert isinstance(res["axis_alignment"], dict) and res["predictor_validation"]
    from spectral_ops.lab.evaluate import evaluate_generator
    from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
    from spectral_ops.lab.train import load_generator

    G, config = load_generator(ckpt)
    predictor, info = load_or_fit_predictor(
        PredictorConfig(dataset=config.dataset, size=config.size), cache_dir=root / "cache", progress=False
    )
    assert info["cached"]  # the one eval fitted
    direct = evaluate_generator(G, dataset=config.dataset, size=config.size, predictor=predictor, n=300, seed=0)
    for key in ("mig", "dci_disentanglement", "frechet_distance", "frechet_ratio"):
        assert res[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), (key, res[key], direct[key])
    assert f"{res['mig']:.3f}" in out  # the printed table shows the written number
    img = Image.open(dest / "traversal.png")
    assert img.format == "PNG" and img.height > 6 * 32


def test_eval_on_a_full_disk_is_a_one_line_error(quick_demo, capsys, tmp_path, monkeypatch):
    """A full disk while eval writes eval.json: one line and exit 2, as train, trace and directions
    say it (previous main: an OSError traceback).  The predictor is the one the test above cached."""
    import errno

    import spectral_ops.lab.cli.eval as eval_cli

    rc, root = quick_demo

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eval_cli, "atomic_write_text", full)
    rc = main(
        [
            "eval",
            "--ckpt",
            str(root / "out" / "spectral" / "checkpoint.pt"),
            "--n-samples",
            "100",
            "--out",
            str(tmp_path / "full"),
            "--cache-dir",
            str(root / "cache"),
            "--no-progress",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0], err


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--steps must be" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--reg-loss", "l2"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_names_a_missing_dependency_before_it_trains(tmp_path, capsys, monkeypatch):
    """Without scikit-learn the demo stops at once, naming the package and the extra to install."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **kw: None if name == "sklearn" else real_find_spec(name, *a, **kw),
    )
    out = tmp_path / "out"
    rc = main(["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "scikit-learn" in err and "spectral_ops[lab]" in err
    assert not (out / "baseline").exists()  # nothing was trained
