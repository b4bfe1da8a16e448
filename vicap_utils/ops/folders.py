"""Output folders: vicap replaces only the entries its `.vicap-owned.json` lists, one writer holds
`.vicap-lock`, a set lands whole (`staged`, `settle`) and an input is never written over."""

import contextlib
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from vicap_utils import __version__
from vicap_utils.ops.io import (
    VicapError,
    atomic_write_json,
    make_output_dir,
    path_problem,
    read_json,
    writing_as,
)

MARKER = ".vicap-owned.json"
LOCK = ".vicap-lock"
COMMIT = ".vicap-commit"
STAGING_PREFIX = ".vicap-staging-"
_REPLACED = ".vicap-replaced"
NOT_VICAPS = "exists and vicap did not write it"

PathLike = str | os.PathLike
Labelled = Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None]]


def _write_marker(folder: Path, kinds: list[str], entries: Iterable[str]) -> None:
    """Write `.vicap-owned.json` atomically."""
    atomic_write_json(folder / MARKER, {
        "vicap": __version__, "kinds": kinds, "entries": sorted(set(entries)),
        "about": "written by vicap: the entries it created here, the only ones it will replace "
                 "or delete"})


def is_bookkeeping(name: str) -> bool:
    """True for the files vicap keeps for itself in an output folder (marker, lock, staging)."""
    return name in (MARKER, LOCK, COMMIT) or name.startswith(STAGING_PREFIX)


def visible_entries(folder: PathLike) -> list[str]:
    """The folder's entries other than vicap's bookkeeping, sorted; [] for a missing folder."""
    try:
        return sorted(n for n in os.listdir(folder) if not is_bookkeeping(n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VicapError(f"{folder}: cannot list the output folder ({exc.strerror})") from None


def read_marker(folder: PathLike) -> dict | None:
    """The folder's marker (`kinds`, `entries`), None when vicap never claimed it."""
    path = Path(folder) / MARKER
    if not os.path.lexists(path):
        return None
    data = read_json(path, "vicap ownership marker")
    data = data if isinstance(data, dict) else {}
    kinds, entries = data.get("kinds"), data.get("entries")
    if not (isinstance(kinds, list) and isinstance(entries, list)
            and all(isinstance(k, str) for k in kinds) and all(map(_valid_name, entries))):
        raise VicapError(f"{path}: not a vicap ownership marker (needs 'kinds' and 'entries' "
                         "lists of names); move it away or pick another --out")
    return data


def owned_entries(folder: PathLike) -> set[str]:
    """Names vicap wrote in `folder` (empty when it holds no marker)."""
    marker = read_marker(folder)
    return set(marker["entries"]) if marker else set()


def claim(folder: PathLike, kind: str, names: Iterable[str] = (), *, overwrite: bool = False,
          empty: bool = False, label: str = "--out") -> None:
    """Claim `folder` for `kind` and `names` (under `folder_lock`), refusing `overwrite` where vicap
    wrote nothing, content when `empty` (unless `overwrite`), and a name a user's file takes."""
    folder = make_output_dir(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder)
    present = visible_entries(folder)
    if present and marker is None and overwrite:
        raise VicapError(f"{folder}: vicap did not create this folder (no {MARKER}), so "
                         "--overwrite will not replace anything in it; pick another --out")
    if present and empty and not overwrite:
        more = f" and {len(present) - 3} more" if len(present) > 3 else ""
        raise VicapError(f"{folder}: already holds {', '.join(present[:3])}{more}; add "
                         "--overwrite to replace what vicap wrote there, or pick an empty --out")
    owned = set(marker["entries"]) if marker else set()
    _refuse_foreign(folder, names, owned, f"{NOT_VICAPS}; move it away or pick another {label}")
    for left in folder.glob(f"{STAGING_PREFIX}*"):  # staging folders a killed vicap process left
        shutil.rmtree(left, ignore_errors=True)
    if marker is None or kind not in marker["kinds"]:
        kinds = marker["kinds"] if marker else []
        _write_marker(folder, [*kinds, kind], owned)


def record(folder: PathLike, names: Iterable[str]) -> None:
    """Add `names` to the entries vicap owns in `folder`; call it before writing them."""
    folder = Path(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder) or {"kinds": [], "entries": []}
    if not set(names) <= set(marker["entries"]):
        _write_marker(folder, marker["kinds"], [*marker["entries"], *names])


def remove_owned(folder: PathLike, names: Iterable[str]) -> list[str]:
    """Delete the given entries (symlinks unlinked, never followed) and return those removed;
    if one is not vicap's, nothing is deleted and a VicapError names it."""
    folder = Path(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder)
    owned = set(marker["entries"]) if marker else set()
    _refuse_foreign(folder, names, owned, "not removed: vicap did not write it")
    removed = [name for name in names if os.path.lexists(folder / name)]
    for path in (folder / name for name in removed):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if marker is not None:
        _write_marker(folder, marker["kinds"], owned - set(names))
    return removed


def _refuse_foreign(folder: Path, names: Iterable[str], owned: set[str], words: str) -> None:
    """Refuse the first of `names` present in `folder` that vicap did not write: "PATH: words"."""
    foreign = next((n for n in names if n not in owned and os.path.lexists(folder / n)), None)
    if foreign:
        raise VicapError(f"{folder / foreign}: {words}")


def _valid_name(name: str) -> bool:
    """A single, ordinary path component that is not vicap bookkeeping."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\0" not in name and not is_bookkeeping(name))


def _checked_name(name: str) -> str:
    """`name` if valid, else ValueError (a programming error, not a user's)."""
    if not _valid_name(name):
        raise ValueError(f"not a plain entry name: {name!r}")
    return name


@contextlib.contextmanager
def folder_lock(folder: PathLike, label: str = "--out") -> Iterator[Path]:
    """Hold the folder's lock (re-entrant in one process) and finish a commit a killed writer
    left; a second writer gets a one-line VicapError at once, naming the option (`label`)."""
    folder = make_output_dir(folder)
    lock = FileLock(Path(os.path.realpath(folder)) / LOCK, timeout=0, is_singleton=True)
    if lock.is_locked:  # this process holds it already: nothing to take or release
        yield folder
        return
    _acquire(lock, folder, label)
    try:
        settle(folder)
        yield folder
    finally:
        with contextlib.suppress(OSError):  # removed while held: no one locks a vanishing file
            os.unlink(lock.lock_file)
        lock.release()


def _acquire(lock: FileLock, folder: Path, label: str) -> None:
    """Take `lock` and write this process's pid in it, or refuse naming the holder's pid."""
    for attempt in range(3):  # a holder may be releasing, or not have written its pid yet
        holder = lock_holder(folder)
        try:
            lock.acquire()
            Path(lock.lock_file).write_text(f"{os.getpid()}\n")
            return
        except Timeout:
            if holder is not None or attempt == 2:
                who = "another process" if holder is None else f"process {holder}"
                raise VicapError(f"{folder}: is in use by {who}; wait for it or pick another "
                                 f"{label}") from None
            time.sleep(0.1)
        except OSError as exc:
            if lock.is_locked:
                lock.release()
            raise VicapError(f"{folder}: cannot write in this output folder "
                             f"({exc.strerror or exc})") from None


def lock_holder(folder: PathLike) -> int | None:
    """The pid of the process holding the folder's lock; None when it is free (never writes)."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            words = fh.read(32).split()
            return int(words[0]) if words and words[0].isdigit() else None
    return None


@contextlib.contextmanager
def staged(folder: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder whose entries then replace those of the same names in
    `folder` as one set, recorded as vicap's; on failure `folder` is unchanged. Needs the lock."""
    folder = Path(folder)
    tmp = folder / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    try:
        with writing_as(tmp, folder):
            tmp.mkdir()
            yield tmp
            names = [_checked_name(name) for name in sorted(os.listdir(tmp))]
            for dirpath, _, files in os.walk(tmp):  # fsync: the set survives a power cut whole
                for name in files:
                    with open(os.path.join(dirpath, name), "rb") as fh:
                        os.fsync(fh.fileno())
            record(folder, names)
            os.rename(tmp, folder / COMMIT)
            settle(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def settle(folder: PathLike) -> None:
    """Finish a commit in `folder`, one a killed process left too (idempotent; under the lock)."""
    folder = Path(folder)
    commit = folder / COMMIT
    if not commit.is_dir():
        return
    replaced = commit / _REPLACED
    replaced.mkdir(exist_ok=True)
    entries = [n for n in os.listdir(commit) if n != _REPLACED]
    entries.sort(key=lambda n: (not (commit / n).is_dir(), n))  # folders first, files last
    for name in entries:
        if os.path.lexists(folder / name):
            os.rename(folder / name, replaced / name)
    for name in entries:
        os.rename(commit / name, folder / name)
    shutil.rmtree(commit)


@contextlib.contextmanager
def output_folder(folder: PathLike, kind: str, names: Iterable[str], *, inputs: Labelled = (),
                  overwrite: bool = False, empty: bool = False,
                  label: str = "--out") -> Iterator[Path]:
    """Refuse outputs that are inputs, lock the folder, claim it for `names`; write them with
    `staged(folder)` inside the block."""
    names = list(names)
    refuse_aliases(inputs, [(label, Path(folder) / n) for n in names])
    with folder_lock(folder, label) as path:
        claim(path, kind, names, overwrite=overwrite, empty=empty, label=label)
        yield path


def refuse_foreign_files(folder: PathLike, named: Iterable[str], beside: Iterable[str] = (), *,
                         overwrite: bool = False) -> None:
    """Refuse to replace a file vicap did not write: one the user named (`named`, e.g. --out)
    unless `overwrite`; one vicap writes beside it (`beside`, a per-image CSV) in any case."""
    folder = Path(folder)
    owned = owned_entries(folder)
    if not overwrite:
        _refuse_foreign(folder, named, owned,
                        f"{NOT_VICAPS}; add --overwrite to replace it, or pick another --out")
    _refuse_foreign(folder, beside, owned, f"{NOT_VICAPS} (vicap writes it beside --out); move "
                    "it away or pick another --out")


@contextlib.contextmanager
def replacing_files(folder: PathLike, named: Sequence[str], beside: Sequence[str] = (), *,
                    overwrite: bool = False) -> Iterator[Path]:
    """Hold `folder`'s lock while single files are written there, refused as by
    `refuse_foreign_files`, then recorded as vicap's before they are written."""
    with folder_lock(folder) as path:
        refuse_foreign_files(path, named, beside, overwrite=overwrite)
        record(path, [*named, *beside])
        yield path


def refuse_aliases(inputs: Labelled, outputs: Labelled) -> None:
    """Refuse, before any work, an output that is an input (same path, symlink, hard link) or a
    folder holding one. Both map a label for the message to a path; None paths are skipped."""
    ins = [(label, path, *_identity(path, label)) for label, path in _pairs(inputs)]
    for out_label, out in _pairs(outputs):
        out_real, out_id = _identity(out, out_label)
        for in_label, inp, in_real, in_id in ins:
            if in_real == out_real or (in_id is not None and in_id == out_id):
                raise VicapError(f"{out}: {out_label} would write over the input {inp} "
                                 f"({in_label}); pick another {out_label}")
            if out_real in in_real.parents:
                raise VicapError(f"{out}: {out_label} would replace the folder holding the "
                                 f"input {inp} ({in_label}); pick another {out_label}")


def _pairs(labelled: Labelled) -> list[tuple[str, Path]]:
    """(label, path) pairs from a mapping or an iterable of pairs, without None paths."""
    items = labelled.items() if isinstance(labelled, Mapping) else labelled
    return [(label, Path(path)) for label, path in items if path is not None]


def _identity(path: Path, label: str) -> tuple[Path, tuple[int, int] | None]:
    """(real path, (device, inode) when it exists); a symlink loop or a NUL is a VicapError."""
    problem = path_problem(path)
    if problem and problem[0] in ("loop", "bad_name"):
        raise VicapError(f"{path}: {label} {problem[1]}")
    st = os.stat(path) if problem is None or problem[0] == "not_regular" else None
    return Path(os.path.realpath(path)), (st.st_dev, st.st_ino) if st else None
