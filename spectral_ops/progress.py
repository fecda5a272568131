"""Progress bars for the library's long calls (`progress=True`): tqdm's where it is installed (the
library depends on torch alone), else a plain count on stderr at every tenth of the work."""

from __future__ import annotations

import sys


class _PlainBar:
    """The part of tqdm's interface the library uses: update(n) and close()."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done, self.shown = max(int(total), 1), desc, 0, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        tenth = min(10, 10 * self.done // self.total)
        if tenth > self.shown:
            self.shown = tenth
            print(f"{self.desc}: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str):
    """A bar of `total` steps named `desc`: tqdm.auto's if tqdm is installed, else `_PlainBar`."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total, desc)
    return tqdm(total=total, desc=desc, leave=False)
