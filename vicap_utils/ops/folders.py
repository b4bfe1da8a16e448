"""Output folders: what vicap may replace there, one writer at a time, inputs never written over.

The rules every command follows before writing into an output folder:

- **Ownership.** A folder vicap writes into holds `.vicap-owned.json`: the kinds of outputs
  (run, audit, split, synth, data), the vicap version and the entries (top-level names) vicap
  wrote there, each recorded just before it is first written. vicap replaces or deletes only
  listed entries; a listed folder is vicap's with everything in it, except a synthetic set's
  `images/`, vicap's file by file (the files its captions.json lists). A missing or empty
  folder is created or adopted. A folder vicap does not own (no marker) that already holds
  files may receive new entries, never one whose name is taken; `--overwrite` on such a folder
  is refused. A command that wants a fresh folder (`synth`) refuses any content unless
  `--overwrite`, which then replaces only vicap's entries. A single file (`predict --out`,
  `evaluate --out`) that exists and vicap did not write is replaced only with `--overwrite`;
  a file vicap writes beside it (a per-image CSV) never.
- **Lock.** `.vicap-lock` holds the writer's pid and start time under an exclusive `flock`: a
  second writer fails at once naming that pid; the kernel drops the lock of a process that
  dies, so a lock file left by a killed run is taken over, and so is one still locked by
  processes a dead writer left behind (where `flock` is unsupported, a lock whose writer no
  longer runs is). The start time keeps a later process that reuses the pid from passing for
  the writer.
- **Sets.** Outputs are written into a staging folder inside the output folder, then committed:
  the staging folder is renamed to `.vicap-commit` (the commit point), the old entries are moved
  aside, the new ones moved in (folders first), the old ones deleted. A crash before the commit
  point leaves the previous outputs untouched; a crash after it is finished by the next vicap
  command that writes into, or reads captions from, the folder. Old and new never mix.
- **Aliases.** Every output path is compared with every input path (resolved, and by device and
  inode, so symlinks and hard links count) before any work; an output that is an input, or an
  output folder that contains one, is refused.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vicap_utils import __version__
from vicap_utils.ops.io import (
    VicapError,
    atomic_write_json,
    make_output_dir,
    read_json,
    write_error,
)

MARKER = ".vicap-owned.json"
LOCK = ".vicap-lock"
COMMIT = ".vicap-commit"
STAGING_PREFIX = ".vicap-staging-"
_REPLACED = ".vicap-replaced"
_PROBE_PREFIX = ".vicap-probe-"
KINDS = ("run", "audit", "split", "synth", "data")

PathLike = str | os.PathLike
Labelled = Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None]]

# Folders this process holds the lock of (real path -> depth): the lock is re-entrant within
# one process, so a command may call another (train -> audit) on the folder it holds.
_HELD: dict[str, int] = {}
_ORPHANED = object()  # the lock's holder is dead, processes it left still hold the file


@dataclass
class Marker:
    """The content of `.vicap-owned.json`."""

    kinds: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    version: str = __version__

    def to_json(self) -> dict:
        """The marker file's JSON."""
        return {"vicap": self.version, "kinds": self.kinds, "entries": sorted(set(self.entries)),
                "about": "written by vicap: the entries it created here, the only ones it "
                         "will replace or delete"}


def is_bookkeeping(name: str) -> bool:
    """True for the files vicap keeps for itself in an output folder (marker, lock, staging)."""
    return name in (MARKER, LOCK, COMMIT) or name.startswith((STAGING_PREFIX, _PROBE_PREFIX))


def visible_entries(folder: PathLike) -> list[str]:
    """The folder's entries other than vicap's bookkeeping, sorted; [] for a missing folder."""
    try:
        return sorted(n for n in os.listdir(folder) if not is_bookkeeping(n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VicapError(f"{folder}: cannot list the output folder ({exc.strerror})") from None


# ---------------------------------------------------------------- ownership


def read_marker(folder: PathLike) -> Marker | None:
    """The folder's marker, None when vicap never claimed it; a damaged one is a VicapError."""
    path = Path(folder) / MARKER
    if not os.path.lexists(path):
        return None
    data = read_json(path, "vicap ownership marker")
    kinds, entries = (data.get("kinds"), data.get("entries")) if isinstance(data, dict) else (
        None, None)
    if not (isinstance(kinds, list) and isinstance(entries, list)
            and all(isinstance(k, str) for k in kinds)
            and all(isinstance(e, str) and _valid_name(e) for e in entries)):
        raise VicapError(f"{path}: not a vicap ownership marker (needs 'kinds' and 'entries' "
                         "lists of names); move it away or pick another --out")
    return Marker(kinds, entries, str(data.get("vicap", "")))


def owned_entries(folder: PathLike) -> set[str]:
    """Names vicap wrote in `folder` (empty when it holds no marker)."""
    marker = read_marker(folder)
    return set(marker.entries) if marker else set()


def claim(folder: PathLike, kind: str, names: Iterable[str] = (), *, overwrite: bool = False,
          empty: bool = False) -> Marker:
    """Make `folder` a vicap output folder of `kind` that may receive `names`, or refuse.

    Refuses (one-line VicapError) when: `overwrite` is asked on a non-empty folder vicap does
    not own; `empty` is asked, the folder holds anything and `overwrite` is not given; or one of
    `names` exists and vicap did not write it. Call it under `folder_lock`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r} (one of {', '.join(KINDS)})")
    folder = make_output_dir(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder)
    present = visible_entries(folder)
    if present and marker is None and overwrite:
        raise VicapError(f"{folder}: vicap did not create this folder (no {MARKER}), so "
                         "--overwrite will not replace anything in it; pick another --out")
    if present and empty and not overwrite:
        raise VicapError(f"{folder}: already holds {_some(present)}; add --overwrite to replace "
                         "what vicap wrote there, or pick an empty --out")
    owned = set(marker.entries) if marker else set()
    foreign = [n for n in names if os.path.lexists(folder / n) and n not in owned]
    if foreign:
        raise VicapError(f"{folder / foreign[0]}: exists and vicap did not write it; move it "
                         "away or pick another --out")
    _remove_stale_staging(folder)
    if marker is None or kind not in marker.kinds:
        marker = marker or Marker()
        marker.kinds.append(kind)
        _write_marker(folder, marker)
    return marker


def record(folder: PathLike, names: Iterable[str]) -> None:
    """Add `names` to the entries vicap owns in `folder`; call it before writing them, so a
    crash never leaves a vicap file that the marker does not list."""
    folder = Path(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder) or Marker()
    if not set(names) <= set(marker.entries):
        marker.entries = sorted(set(marker.entries) | set(names))
        _write_marker(folder, marker)


def remove_owned(folder: PathLike, names: Iterable[str]) -> list[str]:
    """Delete the given entries, all of which the marker must list (else nothing is deleted
    and a VicapError names the first foreign one); symlinks are unlinked, never followed.
    Returns the names actually removed. Call it under `folder_lock`."""
    folder = Path(folder)
    names = [_checked_name(n) for n in names]
    marker = read_marker(folder)
    owned = set(marker.entries) if marker else set()
    foreign = [n for n in names if n not in owned and os.path.lexists(folder / n)]
    if foreign:
        raise VicapError(f"{folder / foreign[0]}: not removed: vicap did not write it")
    removed = []
    for name in names:
        if os.path.lexists(folder / name):
            _remove(folder / name)
            removed.append(name)
    if marker is not None:
        marker.entries = [e for e in marker.entries if e not in names]
        _write_marker(folder, marker)
    return removed


def _write_marker(folder: Path, marker: Marker) -> None:
    """Write the marker atomically."""
    atomic_write_json(folder / MARKER, marker.to_json())


def _valid_name(name: str) -> bool:
    """A single, ordinary path component that is not vicap bookkeeping."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name
            and not is_bookkeeping(name))


def _checked_name(name: str) -> str:
    """`name` if valid, else ValueError (a programming error, not a user's)."""
    if not isinstance(name, str) or not _valid_name(name):
        raise ValueError(f"not a plain entry name: {name!r}")
    return name


def _some(names: list[str], n: int = 3) -> str:
    """The first few names for a message."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _remove(path: Path) -> None:
    """Delete a file, a symlink (not its target) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _remove_stale_staging(folder: Path) -> None:
    """Delete staging folders a killed vicap process left (only ever called under the lock)."""
    for name in os.listdir(folder):
        if name.startswith((STAGING_PREFIX, _PROBE_PREFIX)):
            with contextlib.suppress(OSError):
                _remove(folder / name)


# ---------------------------------------------------------------- lock


@contextlib.contextmanager
def folder_lock(folder: PathLike) -> Iterator[Path]:
    """Hold the folder's exclusive lock (creating the folder); a second writer gets a one-line
    VicapError at once. Taking it also proves the folder is writable, before any work."""
    folder = make_output_dir(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(folder)
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        _release(folder / LOCK, fd)


def lock_holder(folder: PathLike) -> int | None:
    """The pid of a live process holding the folder's lock, None when it is free."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def _acquire(folder: Path) -> int:
    """Open, lock and stamp `folder/.vicap-lock`; returns the open descriptor. Under a brief
    lock on the folder itself, so a takeover never races another writer's stamp."""
    path = folder / LOCK
    with _folder_serialised(folder):
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise VicapError(f"{folder}: cannot write in this output folder "
                                 f"({exc.strerror})") from None
            try:
                holder = _try_lock(fd)
                if holder is _ORPHANED and _same_file(fd, path):
                    os.unlink(path)  # held by what a dead holder left running: take it over
                elif holder is not None and holder is not _ORPHANED:
                    raise VicapError(f"{folder}: is in use by process {holder}; wait for it "
                                     "or pick another --out")
                elif holder is None and _same_file(fd, path):
                    _stamp(fd, path)
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the lock file was replaced or taken over: try again
    raise VicapError(f"{path}: the lock file keeps changing; try again")


@contextlib.contextmanager
def _folder_serialised(folder: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on the folder itself while the lock file is examined (a
    no-op where the folder cannot be opened or locked)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError:  # e.g. a folder without read permission
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _try_lock(fd: int) -> int | str | object | None:
    """None once this process holds the lock, `_ORPHANED` when the recorded holder is dead yet
    the file is still locked (by processes it left), else who holds it (pid, or words)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        holder = _read_holder(fd)
        if holder and not _running(*holder):
            return _ORPHANED
        return holder[0] if holder else "(another vicap process)"
    except OSError:  # no flock on this file system: trust the pid, if it still runs
        holder = _read_holder(fd)
        return holder[0] if holder and holder[0] != os.getpid() and _running(*holder) else None


def _holder(fd: int) -> int | None:
    """For `lock_holder`: the pid holding the lock on `fd`'s file, None when free."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        return holder[0] if holder and _running(*holder) else None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def _stamp(fd: int, path: Path) -> None:
    """Write this process's pid and start time into the lock file (replacing a dead holder's):
    a later process that reuses the pid cannot pass for the holder."""
    start = _start_time(os.getpid())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{'' if start is None else f' {start}'}\n".encode(), 0)
    except OSError as exc:
        raise write_error(path, exc) from None


def _release(path: Path, fd: int) -> None:
    """Remove the lock file (only if it is still ours), then drop the lock."""
    try:
        if _same_file(fd, path):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """True when `path` still names the file open as `fd`."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_holder(fd: int) -> tuple[int, int | None] | None:
    """(pid, start time or None) written in a lock file, None when it holds no pid."""
    try:
        words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    return int(words[0]), int(words[1]) if len(words) > 1 and words[1].isdigit() else None


def _start_time(pid: int) -> int | None:
    """When the process started (/proc/PID/stat field 22, clock ticks after boot); None where
    /proc cannot tell, -1 for a zombie (it has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return -1 if fields[0] == b"Z" else int(fields[19])


def _running(pid: int, start: int | None) -> bool:
    """True while the process that wrote (pid, start) runs: the same pid started at the same
    time where /proc tells, else any process of that pid."""
    now = _start_time(pid)
    if now is None:
        return pid_alive(pid)
    return now != -1 and (start is None or now == start)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- atomic sets


@contextlib.contextmanager
def staged(folder: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder inside `folder`; on success its entries replace those of
    the same names in `folder` as one set (see the module docstring), recorded as vicap's.

    On any failure the staging folder is deleted and `folder` is unchanged; a full disk is a
    one-line VicapError naming the output. Call it under `folder_lock`, after `claim`.
    """
    folder = Path(folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        yield tmp
        names = sorted(os.listdir(tmp))
        for name in names:
            _checked_name(name)
        _fsync_tree(tmp)
        record(folder, names)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, VicapError):
            raise VicapError(str(exc).replace(str(tmp), str(folder))) from None
        if isinstance(exc, OSError):
            target = Path(str(exc.filename).replace(str(tmp), str(folder))) if exc.filename \
                else folder
            raise write_error(target, exc) from None
        raise
    try:
        settle(folder)
        os.rename(tmp, folder / COMMIT)
        settle(folder)
    except OSError as exc:
        raise write_error(folder, exc) from None


def settle(folder: PathLike) -> None:
    """Finish a commit that a killed process left in `folder` (idempotent; under the lock)."""
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
            if os.path.lexists(replaced / name):
                _remove(replaced / name)
            os.rename(folder / name, replaced / name)
    for name in entries:
        os.rename(commit / name, folder / name)
    shutil.rmtree(commit)


def finish_interrupted(folder: PathLike) -> None:
    """For readers: complete a commit a killed writer left in `folder`, so a reader never sees
    half a set; a no-op (and no write) when there is none."""
    folder = Path(folder)
    if (folder / COMMIT).is_dir():
        try:
            with folder_lock(folder):
                settle(folder)
        except VicapError as exc:
            raise VicapError(f"{folder}: holds outputs a killed vicap command left half "
                             f"replaced ({COMMIT}), and they cannot be finished now: "
                             f"{str(exc).removeprefix(f'{folder}: ')}") from None


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, so the renamed set survives a power cut whole."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---------------------------------------------------------------- commands


@contextlib.contextmanager
def output_folder(folder: PathLike, kind: str, names: Iterable[str], *, inputs: Labelled = (),
                  overwrite: bool = False, empty: bool = False,
                  label: str = "--out") -> Iterator[Path]:
    """Everything a command does before writing `names` into `folder`, in order: refuse output
    paths that are inputs, take the lock (proving the folder writable), finish an interrupted
    commit, claim. Write the outputs with `staged(folder)` inside the block."""
    names = list(names)
    refuse_aliases(inputs, [(label, Path(folder) / n) for n in names])
    with folder_lock(folder) as path:
        settle(path)
        claim(path, kind, names, overwrite=overwrite, empty=empty)
        yield path


def refuse_foreign_files(folder: PathLike, named: Iterable[str], beside: Iterable[str] = (), *,
                         overwrite: bool = False) -> None:
    """Refuse, before any work, to replace a file vicap did not write in `folder`: one the user
    named (`named`, e.g. --out) unless `overwrite`; one vicap writes beside it (`beside`, e.g.
    a per-image CSV) in any case."""
    folder = Path(folder)
    owned = owned_entries(folder)
    for name in named:
        if os.path.lexists(folder / name) and name not in owned and not overwrite:
            raise VicapError(f"{folder / name}: exists and vicap did not write it; add "
                             "--overwrite to replace it, or pick another --out")
    for name in beside:
        if os.path.lexists(folder / name) and name not in owned:
            raise VicapError(f"{folder / name}: exists and vicap did not write it (vicap "
                             "writes it beside --out); move it away or pick another --out")


@contextlib.contextmanager
def replacing_files(folder: PathLike, named: Iterable[str], beside: Iterable[str] = (), *,
                    overwrite: bool = False) -> Iterator[Path]:
    """Hold `folder`'s lock while single files are written there: refused as by
    `refuse_foreign_files`, then recorded as vicap's before they are written."""
    named, beside = list(named), list(beside)
    with folder_lock(folder) as path:
        refuse_foreign_files(path, named, beside, overwrite=overwrite)
        record(path, [*named, *beside])
        yield path


def check_writable(folder: PathLike) -> Path:
    """Create `folder` if needed and prove a file can be created in it, before any work."""
    folder = make_output_dir(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=folder)
    except OSError as exc:
        raise VicapError(f"{folder}: cannot write in this folder ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return folder


# ---------------------------------------------------------------- aliases


def refuse_aliases(inputs: Labelled, outputs: Labelled) -> None:
    """Refuse, before any work, an output that would replace an input: the same path, a
    symlink to it, a hard link of it, or an output folder that contains it.

    `inputs` and `outputs` map a label for the message (e.g. "--annotations") to a path, as a
    mapping or (label, path) pairs; None paths are skipped.
    """
    ins = [(label, Path(p), *_identity(Path(p), label)) for label, p in _pairs(inputs)]
    for out_label, out in ((label, Path(p)) for label, p in _pairs(outputs)):
        out_real, out_id = _identity(out, out_label)
        for in_label, inp, in_real, in_id in ins:
            if in_real == out_real or (in_id is not None and in_id == out_id):
                raise VicapError(f"{out}: {out_label} would write over the input {inp} "
                                 f"({in_label}); pick another {out_label}")
            if out_real in in_real.parents:
                raise VicapError(f"{out}: {out_label} would replace the folder holding the "
                                 f"input {inp} ({in_label}); pick another {out_label}")


def _pairs(labelled: Labelled) -> list[tuple[str, PathLike]]:
    """(label, path) pairs from a mapping or an iterable of pairs, without None paths."""
    items = labelled.items() if isinstance(labelled, Mapping) else labelled
    return [(label, path) for label, path in items if path is not None]


def _identity(path: Path, label: str) -> tuple[Path, tuple[int, int] | None]:
    """(real path, (device, inode) when it exists); a symlink loop is a VicapError."""
    try:
        st = os.stat(path)
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except ValueError:
        raise VicapError(f"{path}: {label} contains a NUL character") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VicapError(f"{path}: {label} is a symlink loop") from None
        ident = None
    return Path(os.path.realpath(path)), ident
