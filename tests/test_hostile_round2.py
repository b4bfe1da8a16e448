"""Hostile use, round 2 (issue 19): a kill -9 leaves no process behind and no folder locked;
no command deletes or replaces a file vicap did not write.

Each refusal is exit 2 with one stderr line and every pre-existing file unchanged (checksums
before and after).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from vicap_utils.__main__ import main
from vicap_utils.config import load_config
from vicap_utils.ops.checkpoint import open_run
from vicap_utils.ops.folders import LOCK, MARKER, folder_lock
from vicap_utils.toy.data import generate

REPO = Path(__file__).resolve().parent.parent
REFERENCES = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
              "annotations": [{"id": 1, "image_id": 1, "caption": "con chó chạy trên cỏ"},
                              {"id": 2, "image_id": 2, "caption": "hai con mèo ngủ"}]}
PREDICTIONS = [{"image_id": 1, "caption": "con chó chạy"}, {"image_id": 2, "caption": "mèo ngủ"}]

# Loaded at start-up by every Python process of the command (workers, forkserver included):
# each image decode sleeps, and a worker leaves a file when it starts decoding.
SLOW_DECODE = """\
import os
if os.environ.get("VICAP_TEST_SLOW_DIR"):
    import time
    import vicap_utils.audit as audit
    _check = audit.check_image
    def _slow(path):
        open(os.path.join(os.environ["VICAP_TEST_SLOW_DIR"], str(os.getpid())), "w").close()
        time.sleep(1)
        return _check(path)
    audit.check_image = _slow
"""
# The command, optionally with a thread running first (so the pool uses forkserver, as it
# does inside `vicap train`).
RUN_CLI = """\
import sys, threading, time
if sys.argv[1] == "threads":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
from vicap_utils.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (vicap's lock file left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK}


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment carries `marker`."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/environ", "rb") as env:
                if marker.encode() in env.read():
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def wait_for(condition, seconds: float) -> bool:
    """Poll `condition` until it holds or `seconds` pass."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def caption_set(tmp_path) -> Path:
    """Eight tiny images and their captions."""
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        annotations.append({"id": i, "image_id": i, "caption": f"con chó số {i}"})
    (tmp_path / "captions.json").write_text(json.dumps({"images": images,
                                                         "annotations": annotations}))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_DECODE)
    return tmp_path


def kill_9_while_decoding(root: Path, args: list[str], start: str = "plain") -> None:
    """Run the CLI with slow decodes, kill -9 it once two workers decode, and assert that no
    process it started is left 5 s later."""
    marker = uuid.uuid4().hex
    started = root / f"started-{marker}"
    started.mkdir()
    env = {**os.environ, "VICAP_TEST_MARKER": marker, "VICAP_TEST_SLOW_DIR": str(started),
           "PYTHONPATH": os.pathsep.join([str(root / "site"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, start, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(os.listdir(started)) >= 2, 120), "no worker started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not marked_processes(marker), 5), \
            f"left running: {marked_processes(marker)}"
    finally:
        proc.kill()
        proc.wait()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "threads"])
def test_kill_9_of_audit_leaves_no_worker_and_the_rerun_succeeds(caption_set, start):
    root = caption_set
    args = ["audit", "--annotations", str(root / "captions.json"), "--images",
            str(root / "images"), "--out", str(root / "out"), "--workers", "2"]
    kill_9_while_decoding(root, args, start)
    started = time.monotonic()
    rerun = subprocess.run([sys.executable, "-m", "vicap_utils", *args], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert rerun.returncode == 0, rerun.stderr
    assert time.monotonic() - started < 30
    assert sorted(os.listdir(root / "out")) == sorted(
        [".vicap-owned.json", "audit.json", "clean.json", "rejects.csv"])


@pytest.mark.slow
def test_kill_9_of_train_during_data_preparation_leaves_nothing_and_the_rerun_starts(
        tmp_path, monkeypatch):
    """The rerun into the same run folder gets past both locks (run and data/) to decoding,
    and is killed there too: a whole training would not fit the suite's time."""
    monkeypatch.setenv("VICAP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_DECODE)
    args = ["train", "--profile", "mini", "--set", "data.synthetic_images=8",
            "--out", str(tmp_path / "run")]
    kill_9_while_decoding(tmp_path, args)
    kill_9_while_decoding(tmp_path, args)


# ---------------------------------------------------------------- files vicap did not write


def refused(argv: list[str], root: Path, capsys, names: Path, says: str) -> None:
    """Run the CLI: exit 2, one stderr line naming `names` and saying `says`, nothing under
    `root` changed."""
    before = checksums(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(names) in err and says in err, err
    assert checksums(root) == before


def test_train_overwrite_keeps_a_user_cache_the_run_never_wrote(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config("mini", None, [])
    with folder_lock(run):
        open_run(run, cfg, resume=False, overwrite=False)  # what a run records at its start
    assert json.loads((run / MARKER).read_text())["entries"] == ["config.json", "data"]
    (run / "cache").mkdir()
    (run / "cache" / "notes.txt").write_text("the user's")
    refused(["train", "--profile", "mini", "--out", str(run), "--overwrite"], tmp_path, capsys,
            run / "cache", "exists and vicap did not write it")


def test_evaluate_keeps_a_user_file_where_the_per_image_csv_would_go(tmp_path, capsys):
    (tmp_path / "refs.json").write_text(json.dumps(REFERENCES))
    (tmp_path / "preds.json").write_text(json.dumps(PREDICTIONS))
    (tmp_path / "m_per_image.csv").write_text("the user's table\n")
    refused(["evaluate", "--predictions", str(tmp_path / "preds.json"), "--references",
             str(tmp_path / "refs.json"), "--out", str(tmp_path / "m.json"), "--overwrite"],
            tmp_path, capsys, tmp_path / "m_per_image.csv", "move it away")
    (tmp_path / "m_per_image.csv").unlink()
    (tmp_path / "m.json").write_text("the user's metrics\n")
    refused(["evaluate", "--predictions", str(tmp_path / "preds.json"), "--references",
             str(tmp_path / "refs.json"), "--out", str(tmp_path / "m.json")],
            tmp_path, capsys, tmp_path / "m.json", "add --overwrite")


def test_predict_keeps_an_existing_user_file_without_overwrite(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "refs.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}))
    (tmp_path / "p.json").write_text("the user's predictions\n")
    refused(["predict", "--model", "mini", "--no-adapter", "--annotations",
             str(tmp_path / "refs.json"), "--images", str(tmp_path / "images"), "--out",
             str(tmp_path / "p.json")], tmp_path, capsys, tmp_path / "p.json", "add --overwrite")


def test_synth_overwrite_keeps_a_user_photo_inside_images(tmp_path, capsys):
    generate(tmp_path / "set", n_images=2, seed=1)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "set" / "images" / "holiday.png")
    refused(["synth", "--out", str(tmp_path / "set"), "--n-images", "2", "--overwrite"],
            tmp_path, capsys, tmp_path / "set" / "images" / "holiday.png", "vicap did not draw")
    (tmp_path / "set" / "images" / "holiday.png").unlink()
    assert main(["synth", "--out", str(tmp_path / "set"), "--n-images", "3", "--overwrite"]) == 0
    assert len(os.listdir(tmp_path / "set" / "images")) == 3
