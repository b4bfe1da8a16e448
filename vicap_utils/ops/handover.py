"""Session hand-over: pick up a run that a previous (Kaggle) session left unfinished.

A session that ends keeps its output folder as the notebook's output; attached to the next
session, it appears read-only under the input root (`/kaggle/input/<notebook>/…`). Here we
find the newest unfinished run (a folder whose `last/state.json` says `"finished": false`, or
with `last/` and no `final/`), first in the output folder and failing that under the input
root, and copy it back into the output folder so `--resume` continues it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vicap_utils.ops.io import VicapError, recover_dir

CHECKPOINT = "last"
_SKIP = {"last", "best", "final", "data"}  # parts of a run, never runs themselves
_MAX_DEPTH = 6


def _last_dir(run: Path) -> Path | None:
    """The run's checkpoint folder, or the `.last.old` an interrupted atomic save left."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        if (run / name).is_dir():
            return run / name
    return None


def _state(run: Path) -> dict:
    """The checkpoint's state.json ({} when missing or unreadable)."""
    last = _last_dir(run)
    try:
        return json.loads((last / "state.json").read_text(encoding="utf-8")) if last else {}
    except (OSError, ValueError):
        return {}


def is_unfinished(run: str | Path) -> bool:
    """A checkpoint whose state says not finished, or (no readable state) last/ without final/."""
    run = Path(run)
    if _last_dir(run) is None:
        return False
    state = _state(run)
    if "finished" in state:
        return not state["finished"]
    return not (run / "final").is_dir()


def _profile(run: Path) -> str | None:
    """The profile the run was trained with (its checkpoint's config, else config.json)."""
    config = _state(run).get("config") or {}
    if not config:
        try:
            config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return config.get("profile")


def _runs_under(root: Path, holds: Callable[[Path], object] = _last_dir) -> Iterator[Path]:
    """`root` and the folders below it (a few levels) that hold a checkpoint (or, with
    `holds`, whatever it checks a folder for)."""
    if not root.is_dir():
        return
    base = len(root.parts)
    for folder, dirs, _files in os.walk(root):
        here = Path(folder)
        if holds(here):
            yield here
        if len(here.parts) - base >= _MAX_DEPTH:
            dirs.clear()
        dirs[:] = [d for d in dirs if d not in _SKIP and not d.startswith(".")]


def _recency(run: Path) -> tuple[float, int]:
    """Sort key: checkpoint time, then optimizer steps (copies may share one mtime)."""
    last = _last_dir(run)
    stamp = last / "state.json" if (last / "state.json").is_file() else last
    return stamp.stat().st_mtime, int(_state(run).get("global_step", 0))


def _input_root(input_root: str | Path | None) -> Path:
    if input_root is None:
        from vicap_utils.ops.env import kaggle_input

        return kaggle_input()
    return Path(input_root)


def _newest(root: Path, profile: str | None) -> Path | None:
    runs = [r for r in _runs_under(root)
            if is_unfinished(r) and (profile is None or _profile(r) in (None, profile))]
    return max(runs, key=_recency) if runs else None


def find_resumable(out_dir: str | Path, input_root: str | Path | None = None,
                   profile: str | None = None) -> Path | None:
    """The newest unfinished run in `out_dir` (itself or below), else under `input_root`
    (default the Kaggle input root); only runs of `profile` when given. None if there is none."""
    return _newest(Path(out_dir), profile) or _newest(_input_root(input_root), profile)


def find_trained(profile: str, input_root: str | Path | None = None) -> Path | None:
    """The newest run of `profile` whose best/ holds a fine-tuned adapter under `input_root`
    (default the Kaggle input root: an attached notebook 03 output), or None."""
    from vicap_utils.ops.adapters import WEIGHTS_FILE, is_adapter  # torch: only when asked

    runs = [r for r in _runs_under(_input_root(input_root), lambda r: is_adapter(r / "best"))
            if _profile(r) in (None, profile)]
    return max(runs, key=lambda r: (r / "best" / WEIGHTS_FILE).stat().st_mtime) if runs else None


def bring_back(src: str | Path, dst: str | Path, what: str = "unfinished",
               skip: tuple[str, ...] = ()) -> Path:
    """Copy the run folder `src` (read-only input) to `dst` in the output folder, without the
    entries named in `skip`, and return `dst`. `dst` must not exist or be empty: nothing there
    is overwritten. The copy lands in a temporary sibling first and is renamed into place, so
    `dst` is whole or absent."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise VicapError(f"{dst}: not empty; the previous session's run {src} is not copied over "
                         "it (choose another output folder, or resume the run that is there)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".incoming", dir=dst.parent))
    try:
        copied = tmp / "run"
        shutil.copytree(src, copied, ignore=shutil.ignore_patterns(".*.tmp", *skip),
                        copy_function=shutil.copyfile)
        for path in [copied, *copied.rglob("*")]:  # inputs are read-only; the copy is ours
            path.chmod(path.stat().st_mode | 0o200)
        recover_dir(copied / CHECKPOINT)
        os.replace(copied, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state = _state(dst)
    progress = (f" (epoch {state['epoch']} done, step {state['global_step']})"
                if {"epoch", "global_step"} <= state.keys() else "")
    print(f"copied the {what} run {src} → {dst}{progress}")
    return dst


def prepare_resume(run_dir: str | Path, profile: str | None = None,
                   input_root: str | Path | None = None) -> Path | None:
    """For `--resume` into `run_dir`: `run_dir` itself when it holds a checkpoint; else the
    newest unfinished run a previous session left under the input root, copied into `run_dir`
    (saying so); None when there is nothing to resume."""
    run_dir = Path(run_dir)
    if _last_dir(run_dir) is not None:
        return run_dir
    src = _newest(_input_root(input_root), profile)
    return bring_back(src, run_dir) if src is not None else None
