"""`spectral-ops train`: a small GAN on a procedural dataset, optionally regularized.

- Non-saturating GAN loss; R1 on real images (lazy: every `r1_every` steps, scaled); Adam.
- An exponential moving average of G's weights (`ema`, warmed up as min(ema, (1+t)/(10+t))):
  the EMA generator is what `train` returns as `G`, what checkpoints serve and what is evaluated.
- Optional regularizer on the generator step: the spectral regularizer (`--reg spectral`) or a
  peer (`hessian`, `orojar`, `jacobian_l1`, `path_length`), imported lazily.
- Progress bar (tqdm), a JSON-lines metrics log (`log.jsonl`), a summary (`train.json`).
- Checkpoints are written atomically (temporary file, then `os.replace`) and hold everything
  needed to continue bit-for-bit on the CPU: models, optimizers, regularizer state, the sampling
  generator and the torch / numpy / python RNG states. `--resume` continues from one, with the
  checkpoint's settings: only `RESUMABLE` fields may change, any other difference is refused.
- A fresh run into a folder that already holds one (checkpoint.pt, log.jsonl or train.json) is
  refused unless `overwrite` (`--overwrite`) replaces it.
- Faults: SIGINT / SIGTERM stop the run between two steps, save a checkpoint there and raise
  `TrainingInterrupted` (the CLI prints where it saved and exits 130, or 143 for SIGTERM; a second
  signal, 2 s or more later, stops at once without saving). A NaN / Inf loss or weight raises
  `TrainingDiverged` (exit 1) before anything non-finite is saved. On resume the log is cut back
  to the checkpoint's step, so after a crash (kill -9) every step is logged exactly once. A full
  disk (OSError ENOSPC, also where torch.save meets it) keeps the previous checkpoint and raises
  OSError naming the file (the CLI: one line, exit 2); a resume already at `steps` writes nothing.
- Several processes: run under `torchrun --nproc_per_node N`. Each process draws its own
  batch_size / N rows; G and D are wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU).

Python use: `train(TrainConfig(...)) -> TrainResult` (the demo and the experiment call it).

The modules: `config.py` (TrainConfig, TRAIN_REGULARIZER, the option lists, validation, what may
change on resume), `losses.py` (the D and G updates: adversarial losses, R1, the regularizer),
`checkpoint.py` (checkpoints, load_generator, the output folder, train.json), `loop.py` (`train`:
the loop, DDP, signals, the metrics log, divergence). Patch a name in the module that uses it
(e.g. `spectral_ops.lab.train.loop._ema_update`): this package only re-exports.
"""

from spectral_ops.lab.train.checkpoint import (
    RUN_FILES,
    TrainingDiverged,
    TrainingInterrupted,
    folder_problem,
    load_checkpoint,
    load_generator,
    read_resume,
)
from spectral_ops.lab.train.config import (
    REGULARIZERS,
    RESUMABLE,
    TRAIN_REGULARIZER,
    TrainConfig,
    build_models,
    config_changes,
    format_changes,
    resumed_config,
)
from spectral_ops.lab.train.losses import build_regularizer
from spectral_ops.lab.train.loop import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "build_models",
    "build_regularizer",
    "load_checkpoint",
    "load_generator",
    "REGULARIZERS",
    "RESUMABLE",
    "RUN_FILES",
    "TRAIN_REGULARIZER",
    "TrainingInterrupted",
    "TrainingDiverged",
    # what `spectral-ops train` uses to check a resume and an output folder
    "config_changes",
    "folder_problem",
    "format_changes",
    "read_resume",
    "resumed_config",
]
