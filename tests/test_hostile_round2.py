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

from vicap_utils.folders import LOCK

REPO = Path(__file__).resolve().parent.parent

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
