"""METEOR 1.5 run as one subprocess per call, with a timeout, so a failure cannot hang us.

pycocoevalcap's `Meteor` wrapper keeps one JVM behind a lock that stays held after any
exception (the next call and interpreter exit then hang) and desynchronises on a newline
inside a caption. This runner speaks the same `-stdio` protocol to the same jar: one
`SCORE ||| ref … ||| hyp` line per image gives statistics, then one `EVAL ||| stats …` line
gives a score per image and the corpus score.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pycocoevalcap

from vicap_utils.text import LINE_BREAKS

METEOR_JAR = Path(next(iter(pycocoevalcap.__path__))) / "meteor" / "meteor-1.5.jar"
# What pycocoevalcap runs: English with the jar's normaliser (which splits Vietnamese letters
# outside Latin-1 into separate tokens: "người" -> "ng ư ờ i").
METEOR_EN_ARGS = ("-l", "en", "-norm")
# METEOR-vi: language-independent parameters, exact matching, no normaliser; the caller gives
# NFC, lower-cased tokens.
METEOR_VI_ARGS = ("-l", "other")
METEOR_TIMEOUT_S = 300.0


class MeteorError(RuntimeError):
    """METEOR could not be computed; the message says why."""


def sanitize(text: str) -> str:
    """One protocol-safe line: no line breaks, no `|||` field separator, single spaces."""
    text = LINE_BREAKS.sub(" ", text).replace("|||", "")
    return " ".join(text.split())


def meteor_command(args: Sequence[str], jar: Path = METEOR_JAR) -> list[str]:
    """The java command line for the jar in `-stdio` mode with the given language options."""
    java = shutil.which("java")
    if java is None:
        raise MeteorError("java not found on PATH")
    if not Path(jar).is_file():
        raise MeteorError(f"METEOR jar not found: {jar}")
    # The English run is pycocoevalcap's exact command line (same scores); METEOR-vi must read
    # the UTF-8 it is sent whatever the platform's default encoding.
    encoding = ["-Dfile.encoding=UTF-8"] if tuple(args) != METEOR_EN_ARGS else []
    return [java, *encoding, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", *args]


def meteor_score(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    args: Sequence[str] = METEOR_EN_ARGS,
    jar: Path = METEOR_JAR,
    timeout: float | None = None,
) -> tuple[float, list[float]]:
    """Corpus METEOR and one score per image, from one JVM; raises MeteorError on any failure.

    `timeout` (seconds) defaults to METEOR_TIMEOUT_S as it is at call time."""
    timeout = METEOR_TIMEOUT_S if timeout is None else timeout
    if len(hyps) != len(refs) or not hyps:
        raise MeteorError("METEOR needs one hypothesis per image and at least one image")
    lines = [score_line(h, r) for h, r in zip(hyps, refs, strict=True)]
    cmd = meteor_command(args, jar)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=Path(jar).parent, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            stats = _exchange(proc, lines, len(lines), err)
            scores = _exchange(proc, ["EVAL ||| " + " ||| ".join(stats)], len(lines) + 1, err)
        except MeteorError:
            if not timer.is_alive():
                raise MeteorError(f"METEOR timed out after {timeout:g} s") from None
            raise
        finally:
            timer.cancel()
            _stop(proc)
    return _parse(scores)


def score_line(hyp: str, refs: Sequence[str]) -> str:
    """`SCORE ||| ref1 ||| … ||| hyp`, each field sanitised."""
    return " ||| ".join(["SCORE", *(sanitize(r) for r in refs), sanitize(hyp)])


def _exchange(proc: subprocess.Popen, lines: list[str], n_out: int, err) -> list[str]:
    """Write `lines` from a thread while reading `n_out` answer lines, so no pipe fills up."""
    payload = "".join(f"{line}\n" for line in lines).encode("utf-8")
    writer = threading.Thread(target=_write, args=(proc, payload), daemon=True)
    writer.start()
    answers = []
    for _ in range(n_out):
        raw = proc.stdout.readline()
        if not raw:
            writer.join()
            raise MeteorError(f"METEOR jar stopped early: {_tail(err)}")
        answers.append(raw.decode("utf-8", "replace").strip())
    writer.join()
    return answers


def _write(proc: subprocess.Popen, payload: bytes) -> None:
    """Send bytes to the jar; a broken pipe shows up as a short read on the other side."""
    try:
        proc.stdin.write(payload)
        proc.stdin.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Kill the JVM and reap it; nothing is left running or locked."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            pipe.close()


def _tail(err) -> str:
    """The last stderr line that is not a stack frame, or a placeholder."""
    err.flush()
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("at ")]
    return lines[-1][:300] if lines else "no error output (killed?)"


def _parse(answers: list[str]) -> tuple[float, list[float]]:
    """Per-image scores then the corpus score, as floats."""
    try:
        values = [float(a) for a in answers]
    except ValueError:
        raise MeteorError(f"METEOR answered something that is not a score: {answers[:3]}") from None
    return values[-1], values[:-1]
