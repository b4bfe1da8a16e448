"""pycocoevalcap's Java tools (PTB tokenizer, METEOR 1.5, SPICE), each one subprocess with a
timeout: a failure is a reason, never a hang (its wrappers can hang METEOR or download ~385 MB)."""

import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocoevalcap
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

PKG_DIR = Path(next(iter(pycocoevalcap.__path__)))
PTB_JAR = PKG_DIR / "tokenizer" / "stanford-corenlp-3.4.1.jar"
METEOR_JAR = PKG_DIR / "meteor" / "meteor-1.5.jar"
SPICE_DIR = PKG_DIR / "spice"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# pycocoevalcap's METEOR normalises as English ("người" -> "ng ư ờ i"); METEOR-vi: exact matches.
METEOR_EN_ARGS = ("-l", "en", "-norm")
METEOR_VI_ARGS = ("-l", "other")
TOKENIZE_TIMEOUT_S = 300.0
METEOR_TIMEOUT_S = 300.0


class ScorerUnavailable(RuntimeError):
    """A metric cannot be computed here; the message says why."""


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer in one JVM: lower-cased, punctuation dropped."""
    out = run_java(["-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                    "-lowerCase"], TOKENIZE_TIMEOUT_S, "PTB tokenizer", PTB_JAR.parent,
                   stdin="".join(f"{t}\n" for t in texts))
    lines = out.split("\n")
    if len(lines) < len(texts):
        raise ScorerUnavailable(f"PTB tokenizer returned {len(lines)} lines for {len(texts)}")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
            for line in lines[: len(texts)]]


def meteor_score(hyps: Sequence[str], refs: Sequence[Sequence[str]],
                 args: Sequence[str] = METEOR_EN_ARGS, jar: Path = METEOR_JAR,
                 timeout: float | None = None) -> tuple[float, list[float]]:
    """(corpus METEOR, one score per image) from the jar's plain-text mode."""
    width = max(len(rs) for rs in refs)  # the jar reads `width` references per image
    padded = [r for rs in refs for r in [*rs, *[rs[-1]] * (width - len(rs))]]  # best one counts
    with tempfile.TemporaryDirectory(prefix="vicap-meteor-") as tmp:
        hyp_file, ref_file = Path(tmp) / "hyp.txt", Path(tmp) / "ref.txt"
        for path, texts in ((hyp_file, hyps), (ref_file, padded)):  # `|||` dropped as pycocoevalcap
            lines = (" ".join(t.replace("|||", "").split()) for t in texts)
            path.write_text("".join(f"{line}\n" for line in lines), "utf-8")
        # English as pycocoevalcap runs it (same scores); METEOR-vi reads UTF-8 on any platform.
        encoding = [] if tuple(args) == METEOR_EN_ARGS else ["-Dfile.encoding=UTF-8"]
        out = run_java([*encoding, "-jar", "-Xmx2G", str(jar), str(hyp_file), str(ref_file),
                        *args, "-r", str(width)],
                       METEOR_TIMEOUT_S if timeout is None else timeout, "METEOR", Path(jar).parent)
    scores = re.findall(r"^Segment \d+ score:\s*(\S+)$", out, re.M)
    final = re.search(r"^Final score:\s*(\S+)$", out, re.M)
    if final is None or len(scores) != len(hyps):
        raise ScorerUnavailable(f"METEOR answered something that is not a score: {out[-200:]!r}")
    return float(final.group(1)), [float(s) for s in scores]


def spice_score(hyps: list[str], refs: list[list[str]], timeout: float = 600.0) -> float:
    """SPICE via its jar, only if CoreNLP is installed: never downloads."""
    missing = [j for j in SPICE_CORENLP_JARS if not (SPICE_DIR / "lib" / j).is_file()]
    if missing:
        raise ScorerUnavailable(f"Stanford CoreNLP jars not installed ({', '.join(missing)}); "
                                "SPICE would download ~385 MB on first use, not attempted")
    with tempfile.TemporaryDirectory(prefix="vicap-spice-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        items = [{"image_id": i, "test": h, "refs": r}
                 for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
        src.write_text(json.dumps(items), "utf-8")
        run_java(["-jar", "-Xmx8G", str(SPICE_DIR / "spice-1.0.jar"), str(src), "-out", str(dst),
                  "-subset", "-silent"], timeout, "SPICE", SPICE_DIR)
        try:
            scores = [item["scores"]["All"]["f"] for item in json.loads(dst.read_text("utf-8"))]
            score = float(np.array(scores, float).mean()) if scores else math.nan  # None: NaN
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScorerUnavailable(f"SPICE output unreadable: {exc!r}") from None
    if not math.isfinite(score):
        raise ScorerUnavailable("SPICE returned no score")
    return score


def run_java(args: list[str], timeout: float, what: str, cwd: Path, stdin: str = "") -> str:
    """A Java tool's stdout; a missing java, a timeout or a failure is ScorerUnavailable."""
    java = shutil.which("java")
    if java is None:
        raise ScorerUnavailable("java not found on PATH")
    try:
        proc = subprocess.run([java, *args], cwd=cwd, input=stdin.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ScorerUnavailable(f"{what} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ScorerUnavailable(f"{what} could not start: {exc}") from None
    if proc.returncode != 0:
        err = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()]
        err = [ln for ln in err if ln and not ln.startswith("at ")]  # not the stack frames
        raise ScorerUnavailable(f"{what} failed (exit {proc.returncode}), the jar stopped early: "
                                f"{err[-1][:300] if err else 'no error output'}")
    return proc.stdout.decode("utf-8", "replace")

