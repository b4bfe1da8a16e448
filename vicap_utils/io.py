"""User-facing errors and crash-safe file writing shared by every command."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class VicapError(Exception):
    """An error the user caused and can fix; the CLI prints it as one line and exits 2."""


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Load JSON, turning a missing or malformed file into a one-line VicapError."""
    path = Path(path)
    if path.is_dir():
        raise VicapError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise VicapError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise VicapError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise VicapError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise VicapError(f"{path}: cannot read ({exc.strerror})") from None


def make_output_dir(path: str | Path) -> Path:
    """Create an output folder (and its parents) before any output is written, so a path that
    cannot be a folder (a file, a file as parent, no permission) fails as one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VicapError(f"{path}: output path exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VicapError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    return path


def output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that `path` can be written as a file (not an existing folder)."""
    path = Path(path)
    if path.is_dir():
        raise VicapError(f"{path}: is a folder; give a file name for the {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VicapError(f"{path}: {parent} is a file, not a folder")
            break
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to a temporary sibling, then rename it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write JSON (UTF-8, diacritics kept as they are) atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | Path) -> Path | None:
    """Return `path`, restoring it from the `.old` copy an interrupted `atomic_dir` may leave."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)
    return path if path.exists() else None


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) so that only one process builds
    a shared cache entry at a time; the others wait, then find it built."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
