"""Progress bars on every wait of more than a few seconds (training, the final evaluation, node-eval, tolsweep,
node-report, node-bench): tqdm on stderr, drawn only when stderr is a terminal (never into a log file or a
scheduler's output) and when the run's `trainer.progress` is true. `say` prints a line without breaking a bar."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def shown(enabled: bool = True) -> bool:
    """Whether bars are drawn: `enabled` (trainer.progress) and stderr is a terminal."""
    try:
        return bool(enabled) and sys.stderr.isatty()
    except (AttributeError, ValueError):   # stderr replaced or closed
        return False


def bar(iterable=None, enabled: bool = True, **kwargs):
    """tqdm over `iterable` (or a manual bar: total=...), silent unless `shown(enabled)`."""
    return tqdm(iterable, disable=not shown(enabled), dynamic_ncols=True, file=sys.stderr, **kwargs)


def say(line: str, file=None) -> None:
    """Print a line (stdout by default) above any bar being drawn."""
    tqdm.write(line, file=file or sys.stdout)
    (file or sys.stdout).flush()
