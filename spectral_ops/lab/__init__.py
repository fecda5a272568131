"""spectral_ops.lab: the application wing, built on the library and never imported by it.

- `cli/`: the `spectral-ops` command, one module per subcommand (`add_arguments(parser)` and
  `run(args) -> int`; options generated from config dataclasses by `cli/options.py`, which also
  turns them back into a config, `from_flat`; `cli/generators.py`: where the generator of
  `trace` and `directions` comes from);
- `train/`: the GAN trainer, one module per job: `config.py` (`TrainConfig`, which nests the
  library's `RegularizerConfig`; validation), `losses.py` (adversarial losses, R1, the
  regularizer), `checkpoint.py` (checkpoints, `load_generator`, train.json), `loop.py` (`train`:
  the loop, DDP, signals, the log); `demo.py`: the main job; `evaluate.py`: metrics of a trained
  generator and the results table;
- `data/`: procedural datasets; `models/`: the DCGAN generator and discriminator;
  `metrics/`: disentanglement metrics, factor predictor, reference generators;
- `viz.py`: traversal pictures; `io.py`: atomic writers.  The known-answer gate's generators
  and the tests' generator families live in the library wing, `spectral_ops.testing.known_answer`
  and `spectral_ops.testing.families`.

Checklists:
- a CLI command: a module in `cli/` with `add_arguments` and `run`, one line in
  `cli/__init__.py`'s SUBCOMMANDS, a test in tests/ calling `spectral_ops.lab.cli.main([...])`;
- a dataset: a class in `data/procedural.py` (factors, `render`), an entry in its DATASETS,
  and its case in tests/test_data.py (the trainer's and the demo's --dataset choices follow);
- a training option: a field made with `_option(...)` in `TrainConfig` (the flag follows); a
  regularizer setting as a flag: its entry (help, choices) in `REG_FLAGS` in `train/config.py`.
"""
