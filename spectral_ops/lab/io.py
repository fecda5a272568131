"""File-system helpers shared by the trainer, the metrics cache, the pictures and the CLIs.

Every file the application writes goes through one of the atomic writers (a temporary file in
the same folder, flushed, then renamed), so a crash or a full disk never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed: never a
    half-written file. On any error (a full disk raises OSError) the temporary file is removed
    and a file already at `path` is left as it was."""
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write `text` to `path` the same way as `atomic_save`."""
    path = Path(path)
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call write(binary file) on a temporary file, then rename it to `path` (as `atomic_save`)."""
    _atomic_write(Path(path), write)


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Save a PIL image the same way as `atomic_save` (format from the file's suffix)."""
    from PIL import Image

    path = Path(path)
    _atomic_write(path, lambda f: image.save(f, format=Image.registered_extensions()[path.suffix.lower()]))


class _KeepsWriteError:
    """A binary file as a writer sees it, keeping the first OSError its `write` raised (errno
    ENOSPC, ...): torch.save's zip writer meets that error inside its C++ code and reports its
    own RuntimeError ("unexpected pos ..."), so the file's error is re-raised from here."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):  # everything else (tell, seek, flush, fileno, name) is the file's
        return getattr(self._f, name)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        # a failed write raises the file's OSError (ENOSPC, ...), also where the writer (torch.save)
        # turns it into an error of its own
        with os.fdopen(fd, "wb") as f:
            kept = _KeepsWriteError(f)
            try:
                write(kept)
            except Exception as exc:
                if kept.error is not None and exc is not kept.error:
                    raise kept.error from exc
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def require_modules(command: str, modules: dict[str, str], extra: str = "lab") -> None:
    """Raise a ValueError naming every missing module (import name -> pip name) and how to get it.

    Commands call it before they train, so a missing dependency is reported in seconds, not after
    minutes of work."""
    import importlib.util

    missing = [pip for name, pip in modules.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"{command} needs {', '.join(missing)}: pip install 'spectral_ops[{extra}]' "
            f"(or pip install {' '.join(missing)})"
        )


#: what every command of the application imports beyond torch (the `lab` extra)
LAB_MODULES = {"numpy": "numpy", "tqdm": "tqdm", "PIL": "pillow"}
#: what the measuring commands (demo, eval, trace) import beyond those (the `lab` extra too)
EVAL_MODULES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def writable_dir(path: str | os.PathLike) -> str | None:
    """None if the folder can be created and written to, else a message saying why not."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"output folder {str(p)!r} is not writable ({exc.strerror or exc})"
    return None
