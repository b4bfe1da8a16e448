"""End to end: notebook 06 served by Voila, driven in Debian's Chromium through Playwright."""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_demo import VIETNAMESE

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_caption_demo.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's Chromium at /usr/bin/chromium "
                              "(apt-get install -y chromium)"),
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll the server until it answers HTTP; fail with its log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "voila/static/", timeout=5):
                return
        except urllib.error.HTTPError:  # any HTTP answer means the server is up
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"voila did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def voila_url(mini_output: Path, tmp_path: Path) -> Iterator[str]:
    """Voila serving notebook 06 (mini profile, the session's trained run as output folder);
    always stopped afterwards, its whole process group with it."""
    output = mini_output
    port = free_port()
    log = tmp_path / "voila.log"
    env = {**os.environ, "VICAP_PROFILE": "mini", "VICAP_OUTPUT": str(output),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--ServerApp.port_retries=0"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc, log)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (kernel included), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def synthetic_photo(path: Path) -> Path:
    """A synthetic ball-sports scene saved as PNG, the kind of image the mini adapter knows."""
    from vicap_utils.toy.data import draw_scene, random_scene

    rng = random.Random(11)
    draw_scene(random_scene(rng), (320, 240), rng).save(path)
    return path


def test_upload_and_caption_in_chromium(voila_url: str, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    photo = synthetic_photo(tmp_path / "match.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.goto(voila_url, timeout=180_000)
            upload = page.locator(".widget-upload")
            upload.wait_for(timeout=180_000)
            with page.expect_file_chooser() as chooser:
                upload.click()
            chooser.value.set_files(str(photo))
            expect(page.locator(".vicap-ok")).to_contain_text("match.png", timeout=60_000)
            # by text: the icon's glyph is part of the button's accessible name
            page.locator("button", has_text=re.compile(r"^\s*Caption\s*$")).click()
            caption = page.locator(".vicap-caption").first
            expect(caption).to_be_visible(timeout=120_000)
            text = caption.inner_text()
            page.locator(".vicap-app").screenshot(path=str(tmp_path / "demo_browser.png"))
        finally:
            browser.close()
    assert VIETNAMESE.search(text), text
