"""Output folders: ownership marker, lock (stale ones too), atomic sets, input/output aliases."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vicap_utils.data import load_captions
from vicap_utils.ops import folders
from vicap_utils.ops.folders import (
    COMMIT,
    LOCK,
    MARKER,
    claim,
    folder_lock,
    lock_holder,
    owned_entries,
    record,
    refuse_aliases,
    refuse_foreign_files,
    remove_owned,
    replacing_files,
    staged,
)
from vicap_utils.ops.io import VicapError

HOLD_LOCK = ("import sys, time\nfrom vicap_utils.ops.folders import folder_lock\n"
             "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n"
             "    time.sleep(120)\n")


def marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the marker and lock left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (MARKER, LOCK)}


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a folder; yields (process, folder)."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---------------------------------------------------------------- ownership


def test_claim_creates_a_folder_and_marks_it(tmp_path):
    out = tmp_path / "a" / "b"
    claim(out, "audit", ["audit.json"])
    assert out.is_dir()
    data = marker(out)
    assert data["kinds"] == ["audit"] and data["entries"] == [] and data["vicap"]
    claim(out, "split", ["train.json"])
    assert marker(out)["kinds"] == ["audit", "split"]


def test_claim_adopts_an_empty_folder_and_lists_what_is_recorded(tmp_path):
    claim(tmp_path, "synth", ["captions.json"], empty=True)
    record(tmp_path, ["captions.json", "images"])
    assert owned_entries(tmp_path) == {"captions.json", "images"}


def test_unowned_folder_may_receive_new_names_but_nothing_is_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "clean.json").write_text("mine too", encoding="utf-8")
    claim(tmp_path, "split", ["train.json", "val.json"])
    with pytest.raises(VicapError, match="clean.json: exists and vicap did not write it"):
        claim(tmp_path, "audit", ["audit.json", "clean.json"])
    assert (tmp_path / "clean.json").read_text(encoding="utf-8") == "mine too"


def test_overwrite_is_refused_on_a_folder_vicap_does_not_own(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(VicapError, match=r"vicap did not create this folder .*--overwrite"):
        claim(tmp_path, "run", ["config.json"], overwrite=True)
    assert not (tmp_path / MARKER).exists()


def test_owned_folder_refuses_a_user_file_of_an_output_name(tmp_path):
    claim(tmp_path, "run", ["config.json"])
    record(tmp_path, ["config.json"])
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "summary.json").write_text("user's", encoding="utf-8")
    claim(tmp_path, "run", ["config.json"], overwrite=True)
    with pytest.raises(VicapError, match="summary.json: exists and vicap did not write it"):
        claim(tmp_path, "run", ["config.json", "summary.json"], overwrite=True)


def test_empty_folder_required_unless_overwrite(tmp_path):
    claim(tmp_path, "synth", ["images"], empty=True)
    record(tmp_path, ["images"])
    (tmp_path / "images").mkdir()
    with pytest.raises(VicapError, match=r"already holds images; add --overwrite"):
        claim(tmp_path, "synth", ["images"], empty=True)
    claim(tmp_path, "synth", ["images"], empty=True, overwrite=True)


def test_remove_owned_deletes_only_listed_entries(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious", encoding="utf-8")
    run = tmp_path / "run"
    claim(run, "run")
    (run / "data").mkdir()
    (run / "data" / "train.json").write_text("{}", encoding="utf-8")
    (run / "link").symlink_to(outside, target_is_directory=True)
    (run / "user.txt").write_text("user's", encoding="utf-8")
    record(run, ["data", "link"])
    with pytest.raises(VicapError, match="user.txt: not removed: vicap did not write it"):
        remove_owned(run, ["data", "user.txt"])
    assert (run / "data" / "train.json").exists()  # nothing deleted when one name is foreign
    assert remove_owned(run, ["data", "link", "never_written"]) == ["data", "link"]
    assert not (run / "data").exists() and not (run / "link").exists()
    assert (outside / "keep.txt").read_text(encoding="utf-8") == "precious"
    assert (run / "user.txt").exists() and owned_entries(run) == set()


def test_damaged_marker_is_one_line(tmp_path):
    (tmp_path / MARKER).write_text('{"kinds": "run"}', encoding="utf-8")
    with pytest.raises(VicapError, match="not a vicap ownership marker"):
        claim(tmp_path, "run")
    (tmp_path / MARKER).write_text('{"kinds": [], "entries": ["../etc"]}', encoding="utf-8")
    with pytest.raises(VicapError, match="not a vicap ownership marker"):
        remove_owned(tmp_path, ["x"])


def test_names_must_be_plain_entries(tmp_path):
    for bad in ("../x", "a/b", "", ".", MARKER, LOCK):
        with pytest.raises(ValueError):
            record(tmp_path, [bad])


# ---------------------------------------------------------------- lock


def test_second_writer_is_refused_at_once_naming_the_pid(tmp_path, holder):
    proc = holder(tmp_path)
    assert lock_holder(tmp_path) == proc.pid
    with pytest.raises(VicapError) as info:
        with folder_lock(tmp_path):
            pytest.fail("entered a folder another process holds")
    assert str(info.value) == (f"{tmp_path}: is in use by process {proc.pid}; wait for it or "
                               "pick another --out")


def test_lock_of_a_killed_process_is_taken_over(tmp_path, holder):
    proc = holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK).read_text().split()[0] == str(proc.pid)  # the stale file is left
    assert lock_holder(tmp_path) is None
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK).exists()


def test_lock_is_released_on_error_and_reentrant(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()
    with folder_lock(tmp_path), folder_lock(tmp_path / "." ):
        assert lock_holder(tmp_path) == os.getpid()
    assert lock_holder(tmp_path) is None


def test_lock_in_a_path_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(VicapError, match="exists and is not a folder"):
        with folder_lock(tmp_path / "file"):
            pass
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(VicapError, match="symlink loop"):
        with folder_lock(tmp_path / "loop"):
            pass


# ---------------------------------------------------------------- atomic sets


def test_staged_set_replaces_its_entries_and_keeps_the_rest(tmp_path):
    claim(tmp_path, "audit")
    (tmp_path / "train.json").write_text("a later split", encoding="utf-8")
    for generation in ("old", "new"):
        with staged(tmp_path) as tmp:
            for name in ("audit.json", "clean.json", "rejects.csv"):
                (tmp / name).write_text(generation, encoding="utf-8")
    assert tree(tmp_path) == {"audit.json": b"new", "clean.json": b"new", "rejects.csv": b"new",
                              "train.json": b"a later split"}
    assert owned_entries(tmp_path) == {"audit.json", "clean.json", "rejects.csv"}
    assert sorted(os.listdir(tmp_path)) == sorted([*tree(tmp_path), MARKER])


def test_failure_while_staging_changes_nothing(tmp_path):
    claim(tmp_path, "audit")
    with staged(tmp_path) as tmp:
        (tmp / "clean.json").write_text("old", encoding="utf-8")
    before = tree(tmp_path)
    with pytest.raises(KeyboardInterrupt), staged(tmp_path) as tmp:
        (tmp / "clean.json").write_text("half", encoding="utf-8")
        raise KeyboardInterrupt
    with pytest.raises(VicapError) as info, staged(tmp_path) as tmp:
        (tmp / "clean.json").write_text("half", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "clean.json"))
    assert str(info.value).startswith(f"{tmp_path / 'clean.json'}: disk full")
    assert tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["clean.json", MARKER])


@pytest.mark.parametrize("moved_in", [0, 1, 2])
def test_interrupted_commit_is_finished_never_mixed(tmp_path, moved_in):
    """A crash after the commit point, with 0, 1 or 2 of the new entries moved in."""
    claim(tmp_path, "synth")
    with staged(tmp_path) as tmp:
        (tmp / "images").mkdir()
        (tmp / "images" / "a.jpg").write_text("old image")
        (tmp / "captions.json").write_text("old captions")
    commit = tmp_path / COMMIT
    (commit / "images").mkdir(parents=True)
    (commit / "images" / "a.jpg").write_text("new image")
    (commit / "captions.json").write_text("new captions")
    replaced = commit / ".vicap-replaced"
    replaced.mkdir()
    for name in ("images", "captions.json"):
        os.rename(tmp_path / name, replaced / name)
    for name in ("images", "captions.json")[:moved_in]:
        os.rename(commit / name, tmp_path / name)
    with folder_lock(tmp_path):  # the next writer finishes it
        pass
    assert tree(tmp_path) == {"captions.json": b"new captions", "images/a.jpg": b"new image"}
    assert not commit.exists()


def test_reading_captions_beside_an_interrupted_commit_changes_no_file(tmp_path):
    """Readers never write: a commit a killed writer left is finished by the next writer."""
    claim(tmp_path, "split")
    with staged(tmp_path) as tmp:
        (tmp / "train.json").write_text(json.dumps(
            {"images": [{"id": 1, "file_name": "a.jpg"}],
             "annotations": [{"id": 1, "image_id": 1, "caption": "một con chó"}]}))
    (tmp_path / COMMIT / ".vicap-replaced").mkdir(parents=True)
    (tmp_path / COMMIT / "val.json").write_text("{}")

    def listing() -> list[tuple[str, int]]:
        return [(str(p.relative_to(tmp_path)), p.stat().st_mtime_ns)
                for p in sorted(tmp_path.rglob("*"))]

    before = listing()
    assert len(load_captions(tmp_path / "train.json").images) == 1
    assert listing() == before


def test_claim_removes_staging_left_by_a_killed_process(tmp_path):
    claim(tmp_path, "audit")
    left = tmp_path / ".vicap-staging-abc123"
    left.mkdir()
    (left / "clean.json").write_text("half")
    claim(tmp_path, "audit")
    assert not left.exists()


# ---------------------------------------------------------------- aliases


def test_an_output_that_is_an_input_is_refused(tmp_path):
    data = tmp_path / "captions.json"
    data.write_text("{}", encoding="utf-8")
    (tmp_path / "link.json").symlink_to(data)
    os.link(data, tmp_path / "hard.json")
    (tmp_path / "dir_link").symlink_to(tmp_path, target_is_directory=True)
    for out in (data, tmp_path / "link.json", tmp_path / "hard.json",
                tmp_path / "dir_link" / "captions.json", tmp_path / "." / "captions.json"):
        with pytest.raises(VicapError, match=r"--out would write over the input .*"
                                             r"\(--annotations\); pick another --out"):
            refuse_aliases({"--annotations": data}, {"--out": out})
    refuse_aliases({"--annotations": data}, {"--out": tmp_path / "predictions.json"})
    refuse_aliases({"--annotations": data, "--train-captions": None}, [])


def test_an_output_folder_holding_an_input_is_refused(tmp_path):
    """Data-loss case 2: `train --out P` replaces P/data/ while the training file is there."""
    run = tmp_path / "P"
    (run / "data").mkdir(parents=True)
    train = run / "data" / "train.json"
    train.write_text("{}", encoding="utf-8")
    with pytest.raises(VicapError, match="would replace the folder holding the input"):
        refuse_aliases({"data.train_annotations": train}, {"run data folder": run / "data"})
    with pytest.raises(VicapError, match="would write over the input"):
        refuse_aliases({"data.train_annotations": train},
                       [("run data folder", run / "data" / "train.json")])
    refuse_aliases({"data.train_annotations": train}, {"run data folder": tmp_path / "Q"})


def test_alias_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(VicapError, match=r"loop.json: --annotations is a symlink loop"):
        refuse_aliases({"--annotations": loop}, {"--out": tmp_path / "out.json"})


def test_predict_guard_refuses_out_equal_to_annotations(tmp_path):
    """Data-loss case 3 (predict side): the guard predict calls before loading a model."""
    annotations = tmp_path / "val.json"
    annotations.write_text("{}", encoding="utf-8")
    with pytest.raises(VicapError, match=r"val.json: --out would write over the input"):
        refuse_aliases({"--annotations": annotations, "--images": tmp_path},
                       {"--out": str(annotations)})
    assert annotations.read_text(encoding="utf-8") == "{}"


def test_output_folder_helper_checks_everything_before_work(tmp_path, holder):
    data = tmp_path / "out" / "clean.json"
    data.parent.mkdir()
    data.write_text("{}", encoding="utf-8")
    with pytest.raises(VicapError, match="would write over the input"):
        with folders.output_folder(tmp_path / "out", "audit", ["clean.json"],
                                   inputs={"--annotations": data}):
            pytest.fail("work started")
    holder(tmp_path / "busy")
    with pytest.raises(VicapError, match="in use by process"):
        with folders.output_folder(tmp_path / "busy", "audit", ["clean.json"]):
            pytest.fail("work started")


def test_single_files_replace_a_user_file_only_when_named_and_overwrite(tmp_path):
    (tmp_path / "m.json").write_text("user")
    with pytest.raises(VicapError, match="add --overwrite"):
        refuse_foreign_files(tmp_path, ["m.json"])
    with pytest.raises(VicapError, match="vicap writes it beside --out"):
        refuse_foreign_files(tmp_path, ["x.json"], ["m.json"], overwrite=True)
    with replacing_files(tmp_path, ["m.json"], ["m.csv"], overwrite=True):
        (tmp_path / "m.json").write_text("vicap")
        (tmp_path / "m.csv").write_text("vicap")
    assert owned_entries(tmp_path) == {"m.json", "m.csv"}
    refuse_foreign_files(tmp_path, ["m.json"], ["m.csv"])  # vicap's now: replaced freely
