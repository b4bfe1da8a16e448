"""Session hand-over: a previous Kaggle session's output appears read-only under the input
root; its newest unfinished run is copied back so `--resume` continues it."""

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from vicap_utils.ops.adapters import WEIGHTS_FILE, is_adapter
from vicap_utils.ops.env import kaggle_input
from vicap_utils.ops.io import VicapError, atomic_dir, recover_dir

SKIP = {"last", "best", "final", "data"}  # parts of a run, never runs themselves
MAX_DEPTH = 6


def _last_dir(run: Path) -> Path | None:
    """The run's checkpoint folder, or the `.last.old` an interrupted atomic save left."""
    return next((run / name for name in ("last", ".last.old") if (run / name).is_dir()), None)


def _read(path: Path) -> dict:
    """A JSON object from `path`, {} when missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _state(run: Path) -> dict:
    """The checkpoint's state.json ({} when missing or unreadable)."""
    last = _last_dir(run)
    return _read(last / "state.json") if last else {}


def is_unfinished(run: str | Path) -> bool:
    """A checkpoint whose state says not finished, or (no readable state) last/ without final/."""
    run = Path(run)
    finished = _state(run).get("finished", (run / "final").is_dir())
    return _last_dir(run) is not None and not finished


def _of_profile(run: Path, profile: str | None) -> bool:
    """The run was trained with `profile` (or says none); any run when `profile` is None."""
    config = _state(run).get("config") or _read(run / "config.json")
    return profile is None or config.get("profile") in (None, profile)


def _runs_under(root: Path, holds: Callable[[Path], object] = _last_dir) -> Iterator[Path]:
    """`root` and the folders a few levels below it that hold a checkpoint (or `holds`)."""
    base = len(root.parts)
    for folder, dirs, _files in os.walk(root):
        here = Path(folder)
        if holds(here):
            yield here
        deep = len(here.parts) - base >= MAX_DEPTH
        dirs[:] = [] if deep else [d for d in dirs if d not in SKIP and not d.startswith(".")]


def newest_unfinished(root: Path, profile: str | None) -> Path | None:
    """The newest unfinished run under `root` by checkpoint time, then optimizer steps."""
    def recency(run: Path) -> tuple[float, int]:
        last = _last_dir(run)
        stamp = last / "state.json" if (last / "state.json").is_file() else last
        return stamp.stat().st_mtime, int(_state(run).get("global_step", 0))

    runs = [r for r in _runs_under(root) if is_unfinished(r) and _of_profile(r, profile)]
    return max(runs, key=recency) if runs else None


def find_trained(profile: str, input_root: str | Path | None = None,
                 scst: bool = False) -> Path | None:
    """The newest cross-entropy (or, with `scst`, self-critical) run of `profile` with an adapter
    in best/ under `input_root` (default Kaggle's: an attached notebook 03 or 03b output)."""
    runs = [r for r in _runs_under(Path(input_root or kaggle_input()),
                                   lambda r: is_adapter(r / "best"))
            if _of_profile(r, profile) and bool(_state(r).get("scst_from")) == scst]
    return max(runs, key=lambda r: (r / "best" / WEIGHTS_FILE).stat().st_mtime) if runs else None


def bring_back(src: str | Path, dst: str | Path, what: str = "unfinished",
               skip: tuple[str, ...] = ()) -> Path:
    """Copy the run `src` (read-only input) without `skip` atomically to `dst`, absent or empty."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise VicapError(f"{dst}: not empty; the previous session's run {src} is not copied over "
                         "it (choose another output folder, or resume the run that is there)")
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*.tmp", *skip),
                        copy_function=shutil.copyfile, dirs_exist_ok=True)
        for path in [tmp, *tmp.rglob("*")]:  # inputs are read-only; the copy is ours
            path.chmod(path.stat().st_mode | 0o200)
        recover_dir(tmp / "last")
    state = _state(dst)
    progress = (f" (epoch {state['epoch']} done, step {state['global_step']})"
                if {"epoch", "global_step"} <= state.keys() else "")
    print(f"copied the {what} run {src} → {dst}{progress}")
    return dst


def prepare_resume(run_dir: str | Path, profile: str | None = None,
                   input_root: str | Path | None = None) -> Path | None:
    """`run_dir` when it holds a checkpoint, else the newest unfinished run of a previous
    session copied into it, else None."""
    run_dir = Path(run_dir)
    if _last_dir(run_dir) is not None:
        return run_dir
    src = newest_unfinished(Path(input_root or kaggle_input()), profile)
    return bring_back(src, run_dir) if src is not None else None
