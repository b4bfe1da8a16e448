"""Property-based fuzzing of the caption readers through `vicap audit` (hypothesis).

Whatever the annotations hold, the audit either refuses the file with one VicapError line
(exit 2) or succeeds, and then every input caption is either kept in clean.json or listed in
rejects.csv: none is lost, none counted twice. Deterministic (derandomized, no example
database), a few hundred examples in all.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from vicap_utils.__main__ import main

# Hypothesis keeps a cache (.hypothesis/) in the working directory; tests never write into the
# repository, so it lives in the system's temporary folder.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "vicap-hypothesis")

FUZZ = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FILE_NAMES = st.one_of(
    st.sampled_from(["good.jpg", "also.png", "missing.jpg", "folder.jpg", "../good.jpg",
                     "/etc/hostname", "", " ", "sub/../good.jpg", "a\x00.jpg", "C:\\x.jpg",
                     "p0.jpg", "p0.png"]),
    st.text(max_size=6),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=24)
CAPTIONS = st.one_of(
    TEXT, TEXT, st.sampled_from(["Một con chó.", "  ", "...", "A\x00B\x07 c", "x\ud800y",
                                 "dup", "DUP"]),
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2),
                                                             st.integers(0, 3), max_size=1),
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-images")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for name in ("good.jpg", "p0.jpg"):
        Image.fromarray(pixels).save(folder / name)
    for name in ("also.png", "p0.png"):
        Image.fromarray(pixels[::-1]).save(folder / name)
    (folder / "folder.jpg").mkdir()
    return folder


def run_audit(annotations: Path, images: Path, out: Path) -> tuple[int, str]:
    """(exit code, stderr without progress bars); an exception other than a user error
    (which `main` turns into exit 2) escapes and fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["audit", "--annotations", str(annotations), "--images", str(images),
                     "--out", str(out), "--workers", "1"])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()
             and "decoding images" not in ln]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("vicap audit: error: "), lines
    return code, err.getvalue()


def accounted(out: Path) -> tuple[Counter, dict]:
    """Ids of the kept and the rejected captions (as text, as rejects.csv writes them)."""
    clean = json.loads((out / "clean.json").read_text(encoding="utf-8"))
    with open(out / "rejects.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = Counter(str(a["id"]) for a in clean["annotations"])
    ids.update(r["id"] for r in rows if r["kind"] == "annotation")
    return ids, json.loads((out / "audit.json").read_text(encoding="utf-8"))


@st.composite
def coco_documents(draw) -> dict:
    """COCO-style documents with one id type (mostly) and every kind of bad entry."""
    id_kind = draw(st.sampled_from(["int", "int", "text", "mixed"]))
    ids = {"int": st.integers(0, 6), "text": st.sampled_from(["a", "b", "c", "1"]),
           "mixed": st.one_of(st.integers(0, 3), st.sampled_from(["1", "x"]))}[id_kind]
    image = st.fixed_dictionaries({"id": ids, "file_name": FILE_NAMES},
                                  optional={"width": st.integers(0, 9), "scene": TEXT})
    images = draw(st.lists(image, max_size=5, unique_by=lambda im: (type(im["id"]), im["id"])))
    annotation = st.fixed_dictionaries({"id": ids, "image_id": ids, "caption": CAPTIONS})
    annotations = draw(st.lists(annotation, max_size=10))
    document = {"images": images, "annotations": annotations}
    if draw(st.booleans()):
        document["info"] = {"name": draw(TEXT)}
    if draw(st.integers(0, 9)) == 0:  # now and then a structural defect
        broken = draw(st.sampled_from(["no caption", "not an object", "id list"]))
        if annotations and broken == "no caption":
            annotations[0].pop("caption")
        elif broken == "not an object":
            annotations.append(draw(st.one_of(st.integers(), TEXT)))
        elif images:
            images[0]["id"] = [1]
    return document


@FUZZ
@given(document=coco_documents())
def test_coco_every_caption_kept_or_rejected(images: Path, document: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        code, _ = run_audit(path, images, Path(tmp) / "out")
        if code == 2:
            return
        assert code == 0
        ids, report = accounted(Path(tmp) / "out")
        assert ids == Counter(str(a["id"]) for a in document["annotations"])
        assert report["annotations_total"] == len(document["annotations"])
        assert report["images_total"] == len(document["images"])


LINE = st.tuples(FILE_NAMES, st.sampled_from(["#0", "#1", "", "#"]),
                 st.sampled_from(["\t", "\t", " ", ""]), TEXT)


@FUZZ
@given(lines=st.lists(LINE, min_size=1, max_size=8), blank=st.booleans())
def test_flickr_token_every_line_kept_or_rejected(images: Path, lines, blank) -> None:
    text = "\n".join(f"{name}{tag}{sep}{caption}" for name, tag, sep, caption in lines)
    text = ("\n" if blank else "") + "good.jpg#0\tA dog .\n" + text + "\n"  # a token file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Flickr8k.token.txt"
        path.write_text(text, encoding="utf-8")
        code, _ = run_audit(path, images, Path(tmp) / "out")
        if code == 2:
            return
        ids, report = accounted(Path(tmp) / "out")
        n_lines = sum(1 for line in text.split("\n") if line.strip())
        assert ids == Counter(str(i) for i in range(1, n_lines + 1))
        assert report["annotations_total"] == n_lines


QUOTED = st.sampled_from(['"', '""', ",", '"a, b"', '" x', "a\"b", '"q" r'])


@FUZZ
@given(rows=st.lists(st.tuples(FILE_NAMES, st.lists(st.one_of(TEXT, QUOTED), max_size=3)),
                     max_size=8))
def test_flickr_csv_every_line_kept_or_rejected(images: Path, rows) -> None:
    body = [f"{name},{''.join(parts)}" for name, parts in rows]
    text = "image,caption\n" + "\n".join(body) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text(text, encoding="utf-8")
        code, _ = run_audit(path, images, Path(tmp) / "out")
        if code == 2:
            return
        ids, report = accounted(Path(tmp) / "out")
        n_lines = sum(1 for line in text.split("\n")[1:] if line.strip())
        assert ids == Counter(str(i) for i in range(1, n_lines + 1))
        assert report["annotations_total"] == n_lines
