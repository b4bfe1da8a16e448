"""Hostile inputs against audit, split, synth and evaluate: one table, one rule.

Every bad input either ends in exit 2 with ONE stderr line that names the file and the
problem (no traceback, no earlier output changed), or, for a bad entry inside a usable file,
exit 0 with the entry in rejects.csv under the right reason, every input caption accounted
for. Faults that need another process (a file-size limit for "disk full", no permission,
Ctrl-C, a second writer) run the CLI in a subprocess.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import ctypes
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vicap_utils.__main__ import main
from vicap_utils.ops.folders import LOCK, MARKER, is_bookkeeping, record
from vicap_utils.toy.data import generate

BASE = {
    "info": {"name": "hostile"},
    "images": [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": "also.png"}],
    "annotations": [
        {"id": 1, "image_id": 1, "caption": "Một con chó chạy trên cỏ."},
        {"id": 2, "image_id": 1, "caption": "Con chó nâu đang chạy."},
        {"id": 3, "image_id": 2, "caption": "Hai con mèo ngủ."},
        {"id": 4, "image_id": 2, "caption": "Mèo ngủ trên ghế."},
    ],
}
PREDICTIONS = [{"image_id": 1, "caption": "con chó chạy"}, {"image_id": 2, "caption": "mèo ngủ"}]


def noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")  # ASCII escapes: lone surrogates survive


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Inputs plus complete earlier outputs of every command (audit, split, synth, metrics)."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "images").mkdir()
    noise(0).save(root / "images" / "good.jpg")
    noise(1).save(root / "images" / "also.png")
    write_json(root / "captions.json", BASE)
    write_json(root / "refs.json", BASE)
    write_json(root / "preds.json", PREDICTIONS)
    big = copy.deepcopy(BASE)
    big["annotations"] = [{"id": i, "image_id": 1 + i % 2, "caption": f"Câu số {i} " + "chữ " * 40}
                          for i in range(1, 301)]
    write_json(root / "big.json", big)
    assert main(["audit", "--annotations", str(root / "captions.json"), "--images",
                 str(root / "images"), "--out", str(root / "out"), "--workers", "1"]) == 0
    assert main(["split", "--annotations", str(root / "out" / "clean.json"), "--out",
                 str(root / "split"), "--val-fraction", "0.5"]) == 0
    generate(root / "synth", n_images=2, seed=1)
    # An earlier `evaluate --out metrics.json` (a real one costs 9 s of METEOR): its file,
    # recorded as vicap's the way evaluate records it.
    record(root, ["metrics.json", "metrics_per_image.csv"])
    (root / "metrics.json").write_text('{"CIDEr": 1.5}\n', encoding="utf-8")
    return root


@pytest.fixture
def scene(template, tmp_path) -> Path:
    """A private copy of the template to spoil."""
    return Path(shutil.copytree(template, tmp_path / "s", symlinks=True))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under root with its bytes (None for a folder), vicap's lock left out."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*")) if not p.is_symlink() and not p.is_fifo()
            and p.name != LOCK}


def assert_nothing_lost(before: dict, root: Path, new_outputs: str = "") -> None:
    """Every earlier file is byte-identical; new files are only vicap's bookkeeping, or are
    under `new_outputs` (the output folder of a command that succeeded)."""
    after = snapshot(root)
    changed = [k for k, v in before.items() if after.get(k, b"<gone>") != v
               and not k.endswith(MARKER)]
    assert not changed, changed
    new = [k for k in after if k not in before and after[k] is not None
           and not is_bookkeeping(Path(k).name)
           and not (new_outputs and k.startswith(new_outputs + "/"))]
    assert not new, new


def error_lines(err: str) -> list[str]:
    """stderr without progress output (tqdm bars, evaluate's step lines)."""
    return [ln for ln in err.splitlines() if ln.strip() and "decoding images" not in ln
            and not ln.startswith("evaluate:")]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One hostile input: how to spoil the scene, the command, and what must happen.

    code 2: one error line containing `says` and the path `names` ({r} = scene root).
    code 0: an audit into {r}/new whose rejects.csv has `reject` with `says` in its detail,
    or whose clean.json satisfies `check`.
    """

    id: str
    argv: str
    setup: Callable[[Path], None] | None = None
    code: int = 2
    says: str = ""
    names: str = "{r}/bad.json"
    reject: str = ""
    check: Callable[[Path], None] | None = None
    env: tuple[tuple[str, str], ...] = ()


AUDIT = "audit --annotations {r}/bad.json --images {r}/images --out {r}/out --workers 1"
AUDIT_NEW = "audit --annotations {r}/bad.json --images {r}/images --out {r}/new --workers 1"
FLICKR_NEW = "audit --annotations {r}/bad.txt --images {r}/images --out {r}/new --workers 1"
EVALUATE = "evaluate --predictions {r}/preds.json --references {r}/bad.json --out {r}/metrics.json"


def text(content: str, name: str = "bad.json", encoding: str = "utf-8") -> Callable:
    def setup(root: Path) -> None:
        (root / name).write_text(content, encoding=encoding)
    return setup


def coco(change: Callable[[dict], object]) -> Callable:
    """Write {r}/bad.json: the base set with one change applied."""
    def setup(root: Path) -> None:
        data = copy.deepcopy(BASE)
        change(data)
        write_json(root / "bad.json", data)
    return setup


def caption(value) -> Callable:
    return coco(lambda d: d["annotations"][1].update(caption=value))


def file_name(value) -> Callable:
    return coco(lambda d: d["images"][1].update(file_name=value))


def image(make: Callable[[Path], None]) -> Callable:
    """The base set whose second image is what `make` puts at images/odd.jpg."""
    def setup(root: Path) -> None:
        file_name("odd.jpg")(root)
        make(root / "images" / "odd.jpg")
    return setup


def kept_caption(expected: str) -> Callable:
    def check(root: Path) -> None:
        clean = json.loads((root / "new" / "clean.json").read_text(encoding="utf-8"))
        assert expected in [a["caption"] for a in clean["annotations"]]
    return check


def kept_images(expected: list) -> Callable:
    def check(root: Path) -> None:
        clean = json.loads((root / "new" / "clean.json").read_text(encoding="utf-8"))
        assert [im["id"] for im in clean["images"]] == expected
    return check


def both(*steps: Callable) -> Callable:
    def setup(root: Path) -> None:
        for step in steps:
            step(root)
    return setup


def hard_link(src: str, dst: str) -> Callable:
    return lambda root: os.link(root / src, root / dst)


def symlink(dst: str, target: str) -> Callable:
    return lambda root: (root / dst).symlink_to(target)


def fifo(name: str) -> Callable:
    return lambda root: os.mkfifo(root / name)


def nested(depth: int) -> str:
    return '{"images": [], "annotations": [], "info": ' + "[" * depth + "]" * depth + "}"


CASES = [
    # -- annotation structure: the whole file is refused
    Case("not-json", AUDIT, text("{not json"), says="not valid JSON"),
    Case("json-error-line-after-u2028", AUDIT,
         text('{"images": [\n{"id": 1, "file_name": "a\u2028b.jpg"},\n oops]}'),
         says="at line 3"),
    Case("top-level-list", AUDIT, text("[1, 2]"), says="not a COCO-style captions file"),
    Case("images-not-a-list", AUDIT, text('{"images": {}, "annotations": []}'),
         says="not a COCO-style"),
    Case("image-not-an-object", AUDIT, coco(lambda d: d["images"].append(5)),
         says="images[2] is not an object"),
    Case("image-without-id", AUDIT, coco(lambda d: d["images"][0].pop("id")),
         says="images[0] has no 'id'"),
    Case("image-id-boolean", AUDIT, coco(lambda d: d["images"][0].update(id=True)),
         says="images[0] 'id' must be an integer or text"),
    Case("image-id-float", AUDIT, coco(lambda d: d["images"][0].update(id=1.5)),
         says="'id' must be an integer or text"),
    Case("image-id-nan", AUDIT, coco(lambda d: d["images"][0].update(id=float("nan"))),
         says="'id' must be an integer or text"),
    Case("image-id-empty-text", AUDIT, coco(lambda d: d["images"][0].update(id="")),
         says="images[0] 'id' is empty"),
    Case("repeated-image-id", AUDIT, coco(lambda d: d["images"][1].update(id=1)),
         says="images[1] repeats image id 1"),
    Case("image-ids-1-and-text-1", AUDIT, coco(lambda d: d["images"][1].update(id="1")),
         says="image ids mix integers and text (images[0] id is 1, images[1] id is '1')"),
    Case("annotation-image-id-as-text", AUDIT,
         coco(lambda d: d["annotations"][2].update(image_id="2")),
         says="image ids mix integers and text (images[0] id is 1, annotations[2] image_id "
              "is '2')"),
    Case("annotation-ids-mixed", AUDIT, coco(lambda d: d["annotations"][3].update(id="4")),
         says="annotation ids mix integers and text"),
    Case("annotation-without-caption", AUDIT,
         coco(lambda d: d["annotations"][0].pop("caption")),
         says="annotations[0] has no 'caption'"),
    Case("file-name-not-text", AUDIT, file_name(123), says="images[1] 'file_name' must be text"),
    Case("id-of-5000-digits", AUDIT,
         text('{"images": [{"id": ' + "7" * 5000 + ', "file_name": "good.jpg"}], '
              '"annotations": []}'), says="a number with thousands of digits"),
    Case("json-nested-100000-deep", AUDIT, text(nested(100_000)), says="nested too deeply"),
    Case("json-nested-150-deep", AUDIT, text(nested(150)), says="nested too deeply"),
    Case("lone-surrogate-in-file-name", AUDIT, file_name("a\ud800.jpg"),
         says="images[1] holds text that is not valid Unicode"),
    Case("lone-surrogate-in-info", AUDIT, coco(lambda d: d["info"].update(name="\udfff")),
         says="the top level holds text that is not valid Unicode"),
    Case("empty-file", AUDIT, text(""), says="not valid JSON"),
    Case("utf-16-file", AUDIT, text(json.dumps(BASE), encoding="utf-16"), says="not UTF-8 text"),
    Case("jpeg-bytes-as-annotations", AUDIT,
         lambda r: shutil.copy(r / "images" / "good.jpg", r / "bad.json"), says="not UTF-8 text"),
    Case("annotations-is-a-folder", AUDIT, lambda r: (r / "bad.json").mkdir(),
         says="is a folder, not a captions file"),
    Case("annotations-symlink-loop", AUDIT, symlink("bad.json", "bad.json"),
         says="is a symlink loop"),
    Case("annotations-missing", AUDIT, says="captions file not found"),
    Case("annotations-broken-symlink", AUDIT, symlink("bad.json", "nowhere.json"),
         says="captions file is a broken symlink"),
    Case("annotations-fifo", AUDIT, fifo("bad.json"), says="is not a regular file"),
    Case("unknown-text-format", FLICKR_NEW, text("just words\nmore words\n", "bad.txt"),
         names="{r}/bad.txt", says="unknown captions format"),
    # -- annotation content: one entry rejected, the rest kept
    Case("caption-number", AUDIT_NEW, caption(42), code=0, reject="caption_not_text",
         says="caption is a number (42), not text"),
    Case("caption-list", AUDIT_NEW, caption(["a", "b"]), code=0, reject="caption_not_text",
         says="a list"),
    Case("caption-object", AUDIT_NEW, caption({"vi": "x"}), code=0, reject="caption_not_text",
         says="an object"),
    Case("caption-boolean", AUDIT_NEW, caption(True), code=0, reject="caption_not_text",
         says="a boolean"),
    Case("caption-nan", AUDIT_NEW, caption(float("nan")), code=0, reject="caption_not_text",
         says="NaN"),
    Case("caption-lone-surrogate", AUDIT_NEW, caption("con \ud83d chó"), code=0,
         reject="caption_not_text", says="not valid Unicode"),
    Case("caption-null", AUDIT_NEW, caption(None), code=0, reject="empty_caption"),
    Case("caption-control-characters", AUDIT_NEW, caption("Con\x00 chó\x07 nâu\u200b chạy."),
         code=0, check=kept_caption("Con chó nâu chạy.")),
    Case("file-name-absolute", AUDIT_NEW, file_name("/etc/hostname"), code=0,
         reject="file_outside_images", says="is an absolute path"),
    Case("file-name-dot-dot", AUDIT_NEW, file_name("../captions.json"), code=0,
         reject="file_outside_images", says="leads out of the images folder"),
    Case("file-name-dot-dot-orphans-captions", AUDIT_NEW, file_name("a/../../x.jpg"), code=0,
         reject="orphaned_by_image", says="image 2 was rejected"),
    Case("file-name-empty", AUDIT_NEW, file_name(""), code=0, reject="missing_file",
         says="file_name is empty"),
    Case("file-name-with-nul", AUDIT_NEW, file_name("good.jpg\x00.png"), code=0,
         reject="missing_file", says="NUL"),
    # -- images
    Case("image-is-a-folder", AUDIT_NEW, image(lambda p: p.mkdir()), code=0,
         reject="unreadable_image", says="is a folder, not an image file"),
    Case("image-symlink-loop", AUDIT_NEW, image(lambda p: p.symlink_to(p)), code=0,
         reject="unreadable_image", says="is a symlink loop"),
    Case("image-broken-symlink", AUDIT_NEW, image(lambda p: p.symlink_to(p.parent / "gone")),
         code=0, reject="missing_file", says="is a broken symlink"),
    Case("image-fifo", AUDIT_NEW, image(os.mkfifo), code=0, reject="unreadable_image",
         says="not a regular file"),
    Case("image-truncated", AUDIT_NEW,
         image(lambda p: p.write_bytes((p.parent / "good.jpg").read_bytes()[:300])), code=0,
         reject="unreadable_image"),
    Case("image-zero-bytes", AUDIT_NEW, image(lambda p: p.write_bytes(b"")), code=0,
         reject="unreadable_image"),
    Case("image-is-text", AUDIT_NEW, image(lambda p: p.write_text("not an image")), code=0,
         reject="unreadable_image"),
    Case("images-folder-missing",
         "audit --annotations {r}/captions.json --images {r}/nope --out {r}/out",
         names="{r}/nope", says="images folder not found"),
    Case("images-folder-is-a-file",
         "audit --annotations {r}/captions.json --images {r}/captions.json --out {r}/out",
         names="{r}/captions.json", says="images folder is a file, not a folder"),
    Case("images-folder-symlink-loop",
         "audit --annotations {r}/captions.json --images {r}/loop --out {r}/out",
         symlink("loop", "loop"), names="{r}/loop", says="images folder is a symlink loop"),
    # -- Flickr8k text
    Case("csv-unterminated-quote", FLICKR_NEW,
         text('image,caption\ngood.jpg,A dog .\ngood.jpg,"A dog, runs\nalso.png,A cat .\n',
              "bad.txt"), code=0, reject="malformed_line", says="line 3: unterminated quote",
         check=kept_caption("A cat.")),
    Case("csv-text-after-closing-quote", FLICKR_NEW,
         text('image,caption\ngood.jpg,"A dog" runs\nalso.png,A cat .\n', "bad.txt"), code=0,
         reject="malformed_line", says="line 2: CSV quoting error"),
    Case("csv-nul-in-caption", FLICKR_NEW,
         text("image,caption\ngood.jpg,A\x00 dog .\nalso.png,A cat .\n", "bad.txt"), code=0,
         check=kept_caption("A dog.")),
    Case("token-line-without-tab", FLICKR_NEW,
         text("good.jpg#0\tA dog .\ngood.jpg#1 A dog without tab\nalso.png#0\tA cat .\n",
              "bad.txt"), code=0, reject="malformed_line", says="line 2: expected"),
    Case("token-u2028-keeps-line-numbers", FLICKR_NEW,
         text("good.jpg#0\tA dog\u2028runs .\nalso.png#0\tA cat .\nbroken\n", "bad.txt"), code=0,
         reject="malformed_line", says="line 3:"),
    Case("token-jpg-and-png-of-one-stem", FLICKR_NEW,
         both(text("p0.jpg#0\tA dog .\np0.png#0\tA cat .\n", "bad.txt"),
              lambda r: shutil.copy(r / "images" / "good.jpg", r / "images" / "p0.jpg"),
              lambda r: shutil.copy(r / "images" / "also.png", r / "images" / "p0.png")),
         code=0, check=kept_images(["p0.jpg", "p0.png"])),
    Case("token-file-name-dot-dot", FLICKR_NEW,
         text("../good.jpg#0\tA dog .\nalso.png#0\tA cat .\n", "bad.txt"), code=0,
         reject="file_outside_images"),
    Case("csv-wrong-header", FLICKR_NEW, text("img,text\ngood.jpg,A dog .\n", "bad.txt"),
         names="{r}/bad.txt", says="unknown captions format"),
    # -- CLI values
    Case("audit-workers-0",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/out --workers 0",
         names="", says="--workers must be between 1 and"),
    Case("audit-workers-negative",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/out --workers -3",
         names="", says="--workers must be between 1 and"),
    Case("audit-workers-not-a-number",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/out --workers x",
         names="", says="argument --workers: invalid int value"),
    Case("split-fraction-0", "split --annotations {r}/captions.json --out {r}/split "
         "--val-fraction 0", names="", says="--val-fraction must be between 0 and 1"),
    Case("split-fraction-1.5", "split --annotations {r}/captions.json --out {r}/split "
         "--val-fraction 1.5", names="", says="--val-fraction must be between 0 and 1"),
    Case("split-fraction-nan", "split --annotations {r}/captions.json --out {r}/split "
         "--val-fraction nan", names="", says="--val-fraction must be between 0 and 1"),
    Case("split-seed-not-a-number", "split --annotations {r}/captions.json --out {r}/split "
         "--seed x", names="", says="argument --seed: invalid int value"),
    Case("synth-zero-images", "synth --out {r}/synth2 --n-images 0", names="",
         says="--n-images must be at least 1"),
    Case("synth-negative-images", "synth --out {r}/synth2 --n-images -5", names="",
         says="--n-images must be at least 1"),
    Case("synth-unknown-language", "synth --out {r}/synth2 --lang fr", names="",
         says="argument --lang: invalid choice"),
    # -- outputs that would replace inputs, or are not vicap's
    Case("evaluate-out-is-predictions",
         "evaluate --predictions {r}/preds.json --references {r}/refs.json --out {r}/preds.json",
         names="{r}/preds.json", says="--out would write over the input"),
    Case("evaluate-out-hard-link-of-references",
         "evaluate --predictions {r}/preds.json --references {r}/refs.json --out {r}/m.json",
         hard_link("refs.json", "m.json"), names="{r}/m.json",
         says="would write over the input {r}/refs.json (--references)"),
    Case("evaluate-out-symlink-to-predictions",
         "evaluate --predictions {r}/preds.json --references {r}/refs.json --out {r}/m.json",
         symlink("m.json", "preds.json"), names="{r}/m.json", says="would write over the input"),
    Case("evaluate-per-image-csv-is-references",
         "evaluate --predictions {r}/preds.json --references {r}/m_per_image.csv "
         "--out {r}/m.json", lambda r: shutil.copy(r / "refs.json", r / "m_per_image.csv"),
         names="{r}/m_per_image.csv", says="(its per-image CSV) would write over the input"),
    Case("audit-out-holds-the-annotations",
         "audit --annotations {r}/out/clean.json --images {r}/images --out {r}/out",
         names="{r}/out/clean.json", says="would write over the input"),
    Case("split-out-holds-the-annotations",
         "split --annotations {r}/split/train.json --out {r}/split",
         names="{r}/split/train.json", says="would write over the input"),
    Case("synth-into-a-set-without-overwrite", "synth --out {r}/synth --n-images 2",
         names="{r}/synth", says="already holds captions.json, images; add --overwrite"),
    Case("synth-overwrite-on-a-user-folder", "synth --out {r}/images --n-images 2 --overwrite",
         names="{r}/images", says="vicap did not create this folder"),
    Case("audit-over-a-user-clean-json",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/images",
         lambda r: (r / "images" / "clean.json").write_text("user's"),
         names="{r}/images/clean.json", says="exists and vicap did not write it"),
    Case("audit-out-is-a-file",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/metrics.json",
         names="{r}/metrics.json", says="exists and is not a folder"),
    Case("audit-out-symlink-loop",
         "audit --annotations {r}/captions.json --images {r}/images --out {r}/loop",
         symlink("loop", "loop"), names="{r}/loop", says="symlink loop"),
    # -- evaluate's inputs
    Case("references-all-empty", EVALUATE,
         coco(lambda d: [a.update(caption="  ") for a in d["annotations"]]),
         says="every caption is empty"),
    Case("references-only-punctuation", EVALUATE,
         coco(lambda d: [a.update(caption="...") for a in d["annotations"]]),
         says="no reference caption of the scored images has a word",
         env=(("PATH", "/nonexistent"),)),
    Case("references-ids-1-and-text-1", EVALUATE,
         coco(lambda d: d["annotations"][2].update(image_id="2")), says="image ids mix"),
    Case("predictions-lone-surrogate",
         "evaluate --predictions {r}/bad.json --references {r}/refs.json --out {r}/metrics.json",
         text('[{"image_id": 1, "caption": "x\\ud800"}, {"image_id": 2, "caption": "y"}]'),
         says="item 0 has a caption that is not valid Unicode"),
    Case("predictions-5000-digit-id",
         "evaluate --predictions {r}/bad.json --references {r}/refs.json --out {r}/metrics.json",
         text('[{"image_id": ' + "9" * 5000 + ', "caption": "x"}]'),
         says="a number with thousands of digits"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, scene: Path, capsys, monkeypatch) -> None:
    if case.setup:
        case.setup(scene)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    before = snapshot(scene)
    argv = shlex.split(case.argv.format(r=scene))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code == case.code, captured.err
    if code == 2:
        lines = error_lines(captured.err)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"vicap {argv[0]}: error: "), lines[0]
        assert case.says.format(r=scene) in lines[0]
        assert case.names.format(r=scene) in lines[0]
        assert_nothing_lost(before, scene)
        return
    assert_every_caption_accounted_for(scene)
    if case.reject:
        rows = read_rejects(scene / "new")
        assert any(r["reason"] == case.reject and case.says in r["detail"] for r in rows), rows
    if case.check:
        case.check(scene)
    assert_nothing_lost(before, scene, new_outputs="new")


def read_rejects(out: Path) -> list[dict]:
    with open(out / "rejects.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_every_caption_accounted_for(root: Path) -> None:
    """audit.json's totals: every caption of the input is kept or in rejects.csv."""
    report = json.loads((root / "new" / "audit.json").read_text(encoding="utf-8"))
    rows = read_rejects(root / "new")
    clean = json.loads((root / "new" / "clean.json").read_text(encoding="utf-8"))
    rejected = sum(r["kind"] == "annotation" for r in rows)
    assert report["annotations_ok"] == len(clean["annotations"])
    assert report["annotations_total"] == report["annotations_ok"] + rejected
    source = next(p for p in (root / "bad.json", root / "bad.txt") if p.exists())
    if source.suffix == ".json":
        expected = len(json.loads(source.read_text(encoding="utf-8"))["annotations"])
    else:
        lines = [ln for ln in source.read_text(encoding="utf-8").split("\n") if ln.strip()]
        expected = len(lines) - lines[0].startswith("image,caption")
    assert report["annotations_total"] == expected


# ---------------------------------------------------------------- faults in another process


def cli(argv: list[str], *, fsize: int | None = None,
        preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run `vicap` in a subprocess without Java, optionally under a file-size limit (SIGXFSZ
    ignored, so a write fails with EFBIG as on a full disk)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "vicap_utils", *argv], capture_output=True,
                          text=True, timeout=120, preexec_fn=limit if fsize else preexec,
                          env={**os.environ, "PATH": "/nonexistent"})


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


SUBPROCESS_CASES = {
    # name: (argv template, file-size limit in bytes, words of the error line)
    "audit-disk-full": ("audit --annotations {r}/big.json --images {r}/images --out {r}/out "
                        "--workers 1", 8000, ("disk full", "{r}/out/clean.json")),
    "split-disk-full": ("split --annotations {r}/big.json --out {r}/split", 8000,
                        ("disk full", "{r}/split/train.json")),
    "synth-disk-full": ("synth --out {r}/synth --n-images 40 --overwrite", 6000,
                        ("disk full", "{r}/synth/")),
    "evaluate-disk-full": ("evaluate --predictions {r}/preds.json --references {r}/refs.json "
                           "--out {r}/metrics.json", 600, ("disk full", "{r}/metrics.json")),
}


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_disk_full_keeps_the_previous_outputs(name: str, scene: Path) -> None:
    argv, fsize, words = SUBPROCESS_CASES[name]
    before = snapshot(scene)
    proc = cli(shlex.split(argv.format(r=scene)), fsize=fsize)
    assert_one_line(proc, *(w.format(r=scene) for w in words))
    assert_nothing_lost(before, scene)
    assert not list(scene.rglob(".vicap-staging-*")) and not list(scene.rglob("*.tmp"))


def without_permission_override() -> None:
    """preexec_fn: a root process loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH on exec, so
    file permissions apply to it as to anyone (a no-op for other users)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def permissions_apply() -> None:
    """Skip where permissions cannot be made to apply (root without CAP_SETPCAP)."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import os; os.listdir('/proc/1/root')"],
                               preexec_fn=without_permission_override, capture_output=True)
    except subprocess.SubprocessError:
        pytest.skip("cannot drop root's permission override here")
    if os.geteuid() == 0 and probe.returncode == 0:
        pytest.skip("cannot drop root's permission override here")


PERMISSION_CASES = {
    # name: (what to make unwritable/unreadable, argv template, words of the error line)
    "audit-read-only-out": ("out", 0o555, "audit --annotations {r}/captions.json --images "
                            "{r}/images --out {r}/out", ("cannot write in this output folder",
                                                         "{r}/out")),
    "split-read-only-out": ("split", 0o555, "split --annotations {r}/captions.json --out "
                            "{r}/split", ("cannot write in this output folder", "{r}/split")),
    "evaluate-read-only-folder": (".", 0o555, "evaluate --predictions {r}/preds.json "
                                  "--references {r}/refs.json --out {r}/metrics.json",
                                  ("cannot write in this folder", "{r}")),
    "unreadable-captions": ("captions.json", 0o000, "audit --annotations {r}/captions.json "
                            "--images {r}/images --out {r}/new", ("cannot read",
                                                                  "{r}/captions.json")),
    "unreadable-flickr-file": ("bad.txt", 0o000, "audit --annotations {r}/bad.txt --images "
                               "{r}/images --out {r}/new", ("cannot read", "{r}/bad.txt")),
}


@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_permission_faults_fail_before_any_work(name: str, scene: Path,
                                                permissions_apply: None) -> None:
    target, mode, argv, words = PERMISSION_CASES[name]
    (scene / "bad.txt").write_text("good.jpg#0\tA dog .\n", encoding="utf-8")
    before = snapshot(scene)
    original = (scene / target).stat().st_mode
    (scene / target).chmod(mode)
    try:
        proc = cli(shlex.split(argv.format(r=scene)), preexec=without_permission_override)
    finally:
        (scene / target).chmod(original)
    assert_one_line(proc, *(w.format(r=scene) for w in words))
    assert "decoding images" not in proc.stderr  # refused before the work, not after
    assert_nothing_lost(before, scene)


def test_unreadable_image_is_a_reject(scene: Path, permissions_apply: None) -> None:
    (scene / "images" / "also.png").chmod(0o000)
    proc = cli(["audit", "--annotations", str(scene / "captions.json"), "--images",
                str(scene / "images"), "--out", str(scene / "new"), "--workers", "1"],
               preexec=without_permission_override)
    assert proc.returncode == 0, proc.stderr
    rows = read_rejects(scene / "new")
    assert [(r["file"], r["reason"]) for r in rows if r["kind"] == "image"] == [
        ("also.png", "unreadable_image")]


SLOW_DECODE = """
import sys, time
import vicap_utils.audit as audit
check = audit.check_image
audit.check_image = lambda path: (time.sleep(0.3), check(path))[1]
from vicap_utils.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_cancels_queued_decodes_at_once(scene: Path) -> None:
    data = copy.deepcopy(BASE)
    data["images"] = [{"id": i, "file_name": "good.jpg" if i % 2 else "also.png"}
                      for i in range(1, 61)]
    data["annotations"] = [{"id": i, "image_id": i, "caption": f"Ảnh {i}."} for i in range(1, 61)]
    write_json(scene / "many.json", data)
    before = snapshot(scene)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_DECODE, "audit", "--annotations", str(scene / "many.json"),
         "--images", str(scene / "images"), "--out", str(scene / "out"), "--workers", "2"],
        stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
    seen = b""
    while b"decoding images" not in seen:  # the workers are running
        chunk = proc.stderr.read(4096)
        assert chunk, seen
        seen += chunk
    time.sleep(0.5)  # ~8 s of queued decoding is left
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole process group
    _, rest = proc.communicate(timeout=60)
    assert time.monotonic() - start < 3.0
    err = (seen + rest).decode()
    assert proc.returncode == 130 and "Traceback" not in err
    assert error_lines(err) == ["vicap audit: interrupted"]
    assert_nothing_lost(before, scene)


@contextlib.contextmanager
def lock_held(folder: Path) -> Iterator[int]:
    """Another process holding `folder`'s vicap lock for the block; yields its pid."""
    hold = ("import sys, time\nfrom vicap_utils.ops.folders import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_gets_the_first_ones_pid(scene: Path, capsys) -> None:
    with lock_held(scene / "out") as pid:
        before = snapshot(scene)
        assert main(["audit", "--annotations", str(scene / "captions.json"), "--images",
                     str(scene / "images"), "--out", str(scene / "out")]) == 2
        line = error_lines(capsys.readouterr().err)
        assert line == [f"vicap audit: error: {scene / 'out'}: is in use by process "
                        f"{pid}; wait for it or pick another --out"]
        assert_nothing_lost(before, scene)
