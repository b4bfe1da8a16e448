"""Progress bars that stay readable everywhere: live in a terminal or notebook, sparse in logs."""

import sys
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Any = None, **kwargs: Any):
    """A tqdm.auto bar; when stderr is not a terminal (CI logs) it redraws every 15 s only."""
    in_notebook = type(sys.stdout).__module__.startswith("ipykernel")
    if not sys.stderr.isatty() and not in_notebook:
        kwargs.setdefault("mininterval", 15.0)
    return tqdm(iterable, **kwargs)
