"""User-facing errors, path diagnosis and crash-safe file writing shared by every command."""

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# JSON deeper than this is refused when read: vicap's files need 4 levels, and Python's
# reader and writer both recurse (a deeper document would end in a RecursionError).
MAX_JSON_DEPTH = 100
# errno values that mean "no room to write": a full disk, a quota, a file-size limit.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NAME_MAX = 255  # bytes in a file name on the usual file systems
TEMP_SUFFIX = len(".x.01234567.tmp") - 1  # what the atomic writer adds to a name


class VicapError(Exception):
    """An error the user caused and can fix; the CLI prints it as one line and exits 2."""


def path_problem(path: str | Path) -> tuple[str, str] | None:
    """(code, words) for why `path` is not an existing file or folder, else None; codes:
    missing, broken_link, loop, no_access, not_regular, bad_name, error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken_link", f"is a broken symlink (to {os.readlink(path)})"
        return "missing", "not found"
    except ValueError:
        return "bad_name", "contains a NUL character"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "loop", "is a symlink loop"
        if exc.errno == errno.ENOTDIR:
            return "missing", "not found (a parent is a file, not a folder)"
        if exc.errno == errno.EACCES:
            return "no_access", "cannot be read (permission denied)"
        return "error", f"cannot be read ({exc.strerror})"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "not_regular", "is not a regular file (a pipe, socket or device)"
    return None


def input_file(path: str | Path, what: str = "file", folder: bool = False) -> Path:
    """`path` if it is a readable regular file (with `folder`, an existing folder), else a
    one-line VicapError saying what it is."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise VicapError(f"{path}: {what} {problem[1]}")
    if path.is_dir() != folder:
        raise VicapError(f"{path}: {what} is a file, not a folder" if folder
                         else f"{path}: is a folder, not a {what}")
    return path


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Load JSON; a missing, unreadable, malformed or absurdly nested file is a VicapError."""
    path = input_file(path, what)
    too_deep = f"{path}: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise VicapError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno})") from None
    except UnicodeDecodeError:
        raise VicapError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise VicapError(too_deep) from None
    except KeyError as exc:
        raise VicapError(f"{path}: the key {exc.args[0]!r} appears twice in one object; "
                         "keep one") from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise VicapError(f"{path}: holds a number with thousands of digits; ids and sizes "
                         "must be ordinary numbers") from None
    except OSError as exc:
        raise VicapError(f"{path}: cannot read ({exc.strerror})") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise VicapError(too_deep)
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (json.load would keep the last value silently)."""
    if len(data := dict(pairs)) < len(pairs):
        raise KeyError(next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])))
    return data


def json_depth(data: Any) -> int:
    """Nesting depth of loaded JSON (a scalar is 0), computed level by level, not recursively."""
    depth, level = 0, [data]
    while containers := [value for value in level if isinstance(value, (dict, list))]:
        depth += 1
        level = [item for value in containers
                 for item in (value.values() if isinstance(value, dict) else value)]
    return depth


def error_summary(exc: BaseException) -> str:
    """A library exception as a short phrase: its first line, or torch's "size mismatch" one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return next((ln for ln in lines if "size mismatch" in ln), lines[0])[:200]


def write_error(path: str | Path, exc: OSError) -> VicapError:
    """A one-line error for a failed write: "disk full" for ENOSPC, a quota or a size limit."""
    if exc.errno in DISK_FULL:
        return VicapError(f"{path}: disk full ({exc.strerror}); free some space and run again "
                          "(earlier outputs are unchanged)")
    return VicapError(f"{path}: cannot write ({exc.strerror})")


@contextlib.contextmanager
def writing_as(tmp: Path, path: Path) -> Iterator[None]:
    """Retell errors raised while writing into `tmp` as errors of `path`: a VicapError naming
    it, any OSError (or safetensors' "(os error 28)") a `write_error`."""
    try:
        yield
    except VicapError as exc:
        raise VicapError(str(exc).replace(str(tmp), str(path))) from None
    except OSError as exc:
        raise write_error(str(exc.filename or tmp).replace(str(tmp), str(path)), exc) from None
    except Exception as exc:  # safetensors names a full disk only as "(os error 28)"
        found = re.search(r"\(os error (\d+)\)", str(exc))
        code = int(found[1]) if found else None
        if code not in DISK_FULL:
            raise
        raise write_error(path, OSError(code, os.strerror(code))) from None


@contextlib.contextmanager
def reading_as(path: Path, what: str, fix: str) -> Iterator[Path]:
    """Retell any library's failure to read or apply `path` as one line: "PATH: what (cause);
    fix" (torch, peft, safetensors and zipfile each raise their own types)."""
    try:
        yield path
    except VicapError:
        raise
    except Exception as exc:
        raise VicapError(f"{path}: {what} ({error_summary(exc)}); {fix}") from None


def make_output_dir(path: str | Path) -> Path:
    """Create an output folder and its parents; a path that cannot be one is a VicapError."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None and problem[0] in ("loop", "broken_link", "not_regular", "bad_name"):
        raise VicapError(f"{path}: output folder {problem[1]}")
    if problem is None and not path.is_dir():
        raise VicapError(f"{path}: output path exists and is not a folder")
    back = len(path.parts) - path.parts[::-1].index("..") if ".." in path.parts else 0
    if back and not Path(*path.parts[:back]).exists():  # mkdir would leave the folder it climbs
        raise VicapError(f"{path}: {Path(*path.parts[:back - 1])} does not exist; write the "
                         "path without '..'")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VicapError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    return path


def output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that `path` can be written as a file: a name (no trailing '/')
    short enough for the atomic writer's temporary sibling, in a folder proved writable."""
    if str(path).endswith(("/", os.sep)) or not str(path):
        raise VicapError(f"{str(path)!r} names a folder, not a file; give a file name for the "
                         f"{what}")
    path = Path(path)
    if len(os.fsencode(path.name)) + TEMP_SUFFIX > NAME_MAX:
        raise VicapError(f"{path}: file name too long for the {what} (at most "
                         f"{NAME_MAX - TEMP_SUFFIX} bytes); choose a shorter one")
    if path.is_dir():
        raise VicapError(f"{path}: is a folder; give a file name for the {what}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise VicapError(f"{path}: {parent} is a file, not a folder")
    folder = make_output_dir(path.parent)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise VicapError(f"{folder}: cannot write in this folder ({exc.strerror})") from None
    return path


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write each file to a temporary sibling (fsync), then rename them all: a crash never leaves
    half a file, and a failed write (a full disk) is a one-line VicapError replacing none."""
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            tmp = temps[path] = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            with writing_as(tmp, path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "xb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
        for path, tmp in temps.items():
            with writing_as(tmp, path):
                os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (see `atomic_write_files`)."""
    atomic_write_files({Path(path): text.encode("utf-8")})
    return Path(path)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (UTF-8, diacritics kept as they are) atomically; NaN and ±Infinity, which
    other readers refuse, as null."""
    try:
        text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False)
    except ValueError:
        data = json.loads(json.dumps(data), parse_constant=lambda _: None)
        text = json.dumps(data, ensure_ascii=False, indent=2)
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path` that replaces it on success (the old one is
    `.NAME.old` between the two renames: see `recover_dir`); a full disk leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)  # the mode the umask gives any new folder (mkdtemp's would be 0700)
    old = path.with_name(f".{path.name}.old")
    try:
        with writing_as(tmp, path):
            yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | Path) -> Path | None:
    """`path`, restored first from the `.old` copy an interrupted `atomic_dir` may leave."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)
    return path if path.exists() else None
