"""A run interrupted in one fake Kaggle session is found and copied back in the next."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vicap_utils.ops import handover
from vicap_utils.ops.env import kaggle_input
from vicap_utils.ops.io import VicapError

LAST_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")


def make_run(run: Path, *, finished: bool = False, step: int = 40, profile: str = "uitviic-blip",
             when: float | None = None) -> Path:
    """The folder train.py writes: last/{weights, optimizer, scheduler, rng, state}, best/, …"""
    (run / "last").mkdir(parents=True)
    for name in LAST_FILES:
        (run / "last" / name).write_bytes(os.urandom(256))
    state = {"epoch": step // 20, "global_step": step, "finished": finished,
             "config": {"profile": profile}}
    (run / "last" / "state.json").write_text(json.dumps(state))
    (run / "best").mkdir()
    (run / "best" / "adapter_model.safetensors").write_bytes(os.urandom(64))
    if finished:
        (run / "final").mkdir()
    (run / "history.csv").write_text("epoch,train_loss\n1,2.5\n")
    (run / "config.json").write_text(json.dumps({"profile": profile}))
    (run / "data").mkdir()
    (run / "data" / "train.json").write_text('{"images": [], "annotations": []}')
    if when is not None:
        os.utime(run / "last" / "state.json", (when, when))
    return run


def find_resumable(out_dir: Path, input_root: Path | None = None,
                   profile: str | None = None) -> Path | None:
    """The newest unfinished run (of `profile`) in `out_dir`, else under `input_root` (default
    the Kaggle input root), or None."""
    return (handover.newest_unfinished(out_dir, profile)
            or handover.newest_unfinished(input_root or kaggle_input(), profile))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def attach_as_input(working: Path, input_root: Path, slug: str) -> Path:
    """What Kaggle does with a finished session's output: a read-only input of the next one."""
    mounted = input_root / "notebooks" / "someone" / slug
    shutil.copytree(working, mounted)
    for path in [mounted, *mounted.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return mounted


@pytest.fixture
def sessions(tmp_path, monkeypatch):
    """Session 1 trained until the time limit; session 2 starts with its output attached."""
    s1, s2 = tmp_path / "session1", tmp_path / "session2"
    run = make_run(s1 / "working" / "runs" / "uitviic-blip", when=1_700_000_000)
    make_run(s1 / "working" / "runs" / "finished", finished=True, step=400, when=1_700_000_500)
    (s2 / "working").mkdir(parents=True)
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(s2))
    yield s1, s2, run
    for path in [tmp_path, *tmp_path.rglob("*")]:  # let pytest clean the read-only copy
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_unfinished_run_is_found_in_the_output_folder_first(sessions):
    s1, _, run = sessions
    assert find_resumable(s1 / "working", s1 / "input") == run
    assert find_resumable(run, s1 / "input") == run
    assert handover.prepare_resume(run) == run  # nothing to copy: it is already here


def test_next_session_finds_the_run_under_input_and_copies_it_back(sessions, capsys):
    s1, s2, run = sessions
    mounted = attach_as_input(s1 / "working", s2 / "input", "vicap-03-finetune-lora")
    before = snapshot(mounted)
    src = mounted / "runs" / "uitviic-blip"
    assert find_resumable(s2 / "working") == src  # the finished run is not a candidate

    dst = s2 / "working" / "runs" / "uitviic-blip"
    dst.mkdir(parents=True)  # notebook.run_dir() creates the (empty) run folder first
    assert handover.prepare_resume(dst, profile="uitviic-blip") == dst
    assert capsys.readouterr().out.strip() == (
        f"copied the unfinished run {src} → {dst} (epoch 2 done, step 40)")
    assert snapshot(dst) == snapshot(run)
    assert snapshot(mounted) == before  # the input is never written
    assert all(p.stat().st_mode & 0o200 for p in [dst, *dst.rglob("*")])  # ours to write
    assert [p.name for p in dst.parent.iterdir()] == ["uitviic-blip"]  # no temporary left
    assert find_resumable(s2 / "working") == dst
    assert handover.prepare_resume(dst) == dst and capsys.readouterr().out == ""


def test_newest_unfinished_run_of_the_profile_wins(sessions):
    s1, s2, run = sessions
    make_run(s1 / "working" / "runs" / "older", step=20, when=1_600_000_000)
    make_run(s1 / "working" / "runs" / "flickr", profile="flickr8k-blip2", when=1_800_000_000)
    mounted = attach_as_input(s1 / "working", s2 / "input", "vicap-03")
    assert find_resumable(s2 / "working") == mounted / "runs" / "flickr"
    assert find_resumable(s2 / "working", profile="uitviic-blip") == \
        mounted / "runs" / "uitviic-blip"
    assert find_resumable(s2 / "working", profile="mini") is None


def test_never_copies_over_a_folder_that_holds_something(sessions):
    s1, s2, _ = sessions
    attach_as_input(s1 / "working", s2 / "input", "vicap-03")
    dst = s2 / "working" / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(VicapError, match=r"mine: not empty; the previous session's run .* is not"):
        handover.prepare_resume(dst, profile="uitviic-blip")
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    assert (dst / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["mine"]


def test_interrupted_checkpoint_swap_and_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    src = make_run(tmp_path / "input" / "prev" / "run")
    os.replace(src / "last", src / ".last.old")  # killed between the two renames of atomic_dir
    (src / ".last.abc.tmp").mkdir()  # a half-written checkpoint
    assert handover.is_unfinished(src)
    dst = handover.prepare_resume(tmp_path / "working" / "run")
    assert (dst / "last" / "state.json").is_file() and not (dst / ".last.old").exists()
    assert not (dst / ".last.abc.tmp").exists()


def test_what_counts_as_unfinished(tmp_path):
    run = make_run(tmp_path / "a")
    assert handover.is_unfinished(run)
    (run / "last" / "state.json").unlink()
    assert handover.is_unfinished(run)  # last/ without final/
    (run / "final").mkdir()
    assert not handover.is_unfinished(run)
    assert not handover.is_unfinished(make_run(tmp_path / "b", finished=True))
    assert not handover.is_unfinished(tmp_path / "nothing")
    assert find_resumable(tmp_path / "nowhere", tmp_path / "nothing") is None
    assert handover.prepare_resume(tmp_path / "new", input_root=tmp_path / "nothing") is None


def test_trained_runs_found_as_cross_entropy_or_scst(tmp_path):
    """An input may hold notebook 03's run and 03b's SCST run of the same profile: 04 evaluates
    the cross-entropy one and compares with the SCST one, never the other way round."""
    root = tmp_path / "input"
    ce = make_run(root / "a" / "runs" / "uitviic-blip", finished=True)
    scst = make_run(root / "b" / "runs" / "uitviic-blip-scst", finished=True)
    for run, when in ((ce, 1_700_000_000), (scst, 1_700_000_500)):
        (run / "best" / "vicap.json").write_text("{}")
        os.utime(run / "best" / "adapter_model.safetensors", (when, when))
    state = json.loads((scst / "last" / "state.json").read_text())
    (scst / "last" / "state.json").write_text(json.dumps({**state, "scst_from": str(ce / "best")}))
    assert handover.find_trained("uitviic-blip", root) == ce  # not the newer SCST run
    assert handover.find_trained("uitviic-blip", root, scst=True) == scst
    assert handover.find_trained("mini", root, scst=True) is None
