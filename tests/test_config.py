"""RegularizerConfig (the library's typed settings), the dataclass helpers and the CLI flags
generated from them."""

import argparse
import dataclasses

import pytest

from spectral_ops import RegularizerConfig, SpectralRegularizer
from spectral_ops.lab.cli.options import add_options, from_flat
from spectral_ops.lab.train import TRAIN_REGULARIZER, TrainConfig
from spectral_ops.lab.train.config import flat_items
from spectral_ops.ops import LOSS_KINDS


@pytest.mark.parametrize(
    "field, value, exc",
    [
        ("loss", "l2", ValueError),
        ("grad", "last_step", ValueError),
        ("iters", 0, ValueError),
        ("iters", 1.5, TypeError),
        ("batch_fraction", 0.0, ValueError),
        ("momentum", 1.5, ValueError),
        ("warm_start", 1, TypeError),
        ("tol", float("nan"), ValueError),
        ("seed", None, TypeError),
        # a value of the wrong type for a number is a TypeError, as for every other field (previous
        # main: ValueError from check_number)
        ("tol", "1e-4", TypeError),
        ("momentum", True, TypeError),
        ("null_tol", None, TypeError),
        ("batch_fraction", "half", TypeError),
    ],
)
def test_a_bad_field_fails_where_it_is_written_naming_it(field, value, exc):
    with pytest.raises(exc, match=field if field != "grad" else "grad='fast'"):
        RegularizerConfig(**{field: value})


def test_overrides_and_k_against_latent_dim():
    reg = SpectralRegularizer(8, RegularizerConfig(k=3), every=2)
    assert (reg.k, reg.every, reg.loss) == (3, 2, "offdiag") and reg.config.every == 2
    with pytest.raises(ValueError, match="latent_dim=4"):
        SpectralRegularizer(4, k=5)
    with pytest.raises(TypeError, match="unknown regularizer option"):
        SpectralRegularizer(8, kk=3)


def test_from_flat_and_flat_items_round_trip():
    config = TrainConfig(steps=7, reg_config=TRAIN_REGULARIZER.replace(k=2, loss="l1"))
    flat = flat_items(config)
    assert flat["reg_config.k"] == 2 and flat["steps"] == 7
    assert from_flat(TrainConfig, flat) == config
    with pytest.raises(ValueError, match="reg_config: k must be an int >= 1"):
        from_flat(TrainConfig, {"reg_config.k": 0})


def test_old_checkpoints_with_flat_reg_fields_load():
    old = {**dataclasses.asdict(TrainConfig()), "reg_k": 2, "reg_every": 3, "reg_loss": "l1"}
    del old["reg_config"]
    config = TrainConfig.from_dict(old)
    assert (config.reg_config.k, config.reg_config.every, config.reg_config.loss) == (2, 3, "l1")
    with pytest.raises(TypeError, match="no_such_field"):
        TrainConfig.from_dict({"no_such_field": 1})


def test_generated_flags_take_choices_and_defaults_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig)
    args = parser.parse_args(["--reg-k", "3", "--reg-loss", "l1", "--steps", "5"])
    config = from_flat(TrainConfig, vars(args))
    assert (config.reg_config.k, config.reg_config.loss, config.steps) == (3, "l1", 5)
    assert config.reg_config.every == TRAIN_REGULARIZER.every  # untouched fields keep the trainer's default
    loss_flag = next(a for a in parser._actions if "--reg-loss" in a.option_strings)
    assert tuple(loss_flag.choices) == LOSS_KINDS
    with pytest.raises(SystemExit):
        parser.parse_args(["--reg-loss", "l2"])


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, -(2**70)])
def test_a_seed_a_generator_cannot_take_is_refused_where_it_is_written(seed):
    """RegularizerConfig and SpectralRegularizer refuse a seed outside [-2**63, 2**64 - 1] naming
    it.  Before: the config took it and the regularizer's first call raised "Overflow when
    unpacking long long" from inside torch."""
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\], got "):
        RegularizerConfig(seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\]"):
        SpectralRegularizer(6, seed=seed)


@pytest.mark.parametrize("value", ["no", 1, None])
def test_warm_start_must_be_a_bool(value):
    """The one bool field: a str (or an int) is a TypeError, not a truthy value."""
    with pytest.raises(TypeError, match=f"warm_start must be a bool, got {type(value).__name__}"):
        SpectralRegularizer(6, warm_start=value)


def test_the_library_config_has_plain_fields_and_the_flags_live_in_the_application():
    """RegularizerConfig's fields carry no command-line metadata (help, choices) and the library's
    config module makes no flags; the --reg-* flags' help and choices are the trainer's REG_FLAGS,
    whose choices are the library's lists.  Before: option(...) fields and from_flat in the library."""
    import spectral_ops.config as library_config
    from spectral_ops.config import GRADS
    from spectral_ops.lab.train.config import REG_FLAGS

    assert all(not f.metadata for f in dataclasses.fields(RegularizerConfig))
    assert not {"option", "from_flat", "flat_items"} & set(vars(library_config))
    assert REG_FLAGS["loss"][1] is LOSS_KINDS and REG_FLAGS["grad"][1] is GRADS
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig)
    reg_flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--reg-")]
    assert reg_flags == ["--reg-weight", "--reg-global"] + ["--reg-" + name.replace("_", "-") for name in REG_FLAGS]
