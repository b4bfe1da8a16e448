"""`vicap audit` on tiny defective sets, image modes, bad input; image decoding helpers."""
from __future__ import annotations

import csv
import json
import unicodedata

import numpy as np
import pytest
from PIL import Image

from vicap_utils.__main__ import main
from vicap_utils.audit import REASONS, audit
from vicap_utils.images import check_image, load_rgb

NFC_CAPTION = "Một người đàn ông đang chơi quần vợt."


def noise(size=(48, 32), mode="RGB", seed=0):
    """A small image whose JPEG is big enough to truncate meaningfully."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_images(folder):
    """Every kind of image the audit must accept or reject; returns {name: expected size}."""
    folder.mkdir()
    noise().save(folder / "good.jpg")
    noise(mode="L").save(folder / "grey.jpg")
    rgba = noise(mode="RGBA")
    rgba.putalpha(0)
    rgba.save(folder / "clear.png")
    noise(mode="P").save(folder / "palette.png")
    noise(mode="CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    noise(size=(64, 32)).save(folder / "rotated.jpg", exif=exif)
    noise(size=(16, 16)).save(folder / "lonely.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n", encoding="utf-8")


def defective_coco():
    """One instance of each defect a COCO file can have (two unreadable images: a truncated
    JPEG and a text file), plus valid images of five modes."""
    names = ["good.jpg", "grey.jpg", "clear.png", "palette.png", "cmyk.jpg", "rotated.jpg",
             "truncated.jpg", "text.jpg", "missing.jpg", "lonely.jpg", "../outside.jpg"]
    images = [{"id": i, "file_name": name, "scene": "test"} for i, name in enumerate(names, 1)]
    captions = [
        (1, 1, unicodedata.normalize("NFD", NFC_CAPTION)),
        (2, 1, "Người  đàn ông cầm vợt ."),
        (3, 1, "Người đàn ông cầm vợt."),  # duplicate_caption (after normalisation)
        (4, 1, "   "),  # empty_caption
        (5, 999, "Ảnh không tồn tại."),  # unknown_image_id
        (2, 1, "Một câu khác dùng lại id 2."),  # duplicate_annotation_id
        (6, 2, "Ảnh xám."),
        (7, 3, "Ảnh trong suốt."),
        (8, 4, "Ảnh bảng màu."),
        (9, 5, "Ảnh CMYK."),
        (10, 6, "Ảnh xoay."),
        (11, 7, "Ảnh bị cắt cụt."),  # orphaned_by_image
        (12, 2, 42),  # caption_not_text
    ]
    annotations = [{"id": a, "image_id": i, "caption": c} for a, i, c in captions]
    return {"info": {"name": "defects"}, "images": images, "annotations": annotations}


@pytest.fixture
def defective(tmp_path):
    """(annotations path, images folder, out folder) of the defective set."""
    write_images(tmp_path / "images")
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(defective_coco(), ensure_ascii=False), encoding="utf-8")
    return path, tmp_path / "images", tmp_path / "out"


def run_cli(annotations, images, out, *extra):
    return main(["audit", "--annotations", str(annotations), "--images", str(images),
                 "--out", str(out), *extra])


def read_rejects(out):
    with open(out / "rejects.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_each_defect_counted_once(defective, capsys):
    annotations, images, out = defective
    assert run_cli(annotations, images, out) == 0
    report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert report["rejects"] == {reason: 1 for reason in REASONS} | {"unreadable_image": 2,
                                                                      "malformed_line": 0}
    assert report["images_total"] == 11 and report["images_ok"] == 6
    assert report["annotations_total"] == 13 and report["annotations_ok"] == 7
    assert report["normalized_captions"] == 2
    assert "images" in capsys.readouterr().out


def test_rejects_csv_rows(defective):
    annotations, images, out = defective
    audit(annotations, images, out)
    rows = read_rejects(out)
    assert list(rows[0]) == ["kind", "id", "file", "reason", "detail"]
    by_reason = {row["reason"]: row for row in rows}
    assert set(by_reason) == set(REASONS) - {"malformed_line"} and len(rows) == 11
    unreadable = {row["file"] for row in rows if row["reason"] == "unreadable_image"}
    assert unreadable == {"truncated.jpg", "text.jpg"}
    assert by_reason["missing_file"]["file"] == "missing.jpg"
    assert by_reason["unreadable_image"]["kind"] == "image"
    assert by_reason["image_without_captions"]["file"] == "lonely.jpg"
    assert by_reason["orphaned_by_image"]["id"] == "11"
    assert by_reason["unknown_image_id"]["kind"] == "annotation"
    assert by_reason["caption_not_text"]["id"] == "12"
    assert by_reason["caption_not_text"]["detail"] == "caption is a number (42), not text"
    assert by_reason["file_outside_images"]["file"] == "../outside.jpg"


def test_truncated_and_text_files_are_unreadable(defective):
    _, images, _ = defective
    truncated = check_image(images / "truncated.jpg")
    text = check_image(images / "text.jpg")
    assert (truncated.ok, truncated.reason) == (False, "unreadable_image")
    assert "truncated" in truncated.detail
    assert (text.ok, text.reason) == (False, "unreadable_image")
    assert check_image(images / "missing.jpg")[:2] == (False, "missing_file")


def test_clean_json_keeps_valid_captions_normalised(defective):
    annotations, images, out = defective
    audit(annotations, images, out, workers=1)
    clean = json.loads((out / "clean.json").read_text(encoding="utf-8"))
    assert clean["info"] == {"name": "defects"}
    by_file = {im["file_name"]: im for im in clean["images"]}
    assert set(by_file) == {"good.jpg", "grey.jpg", "clear.png", "palette.png", "cmyk.jpg",
                            "rotated.jpg"}
    assert by_file["good.jpg"]["scene"] == "test"
    assert (by_file["good.jpg"]["width"], by_file["good.jpg"]["height"]) == (48, 32)
    assert (by_file["rotated.jpg"]["width"], by_file["rotated.jpg"]["height"]) == (32, 64)
    captions = {a["id"]: a["caption"] for a in clean["annotations"]}
    assert sorted(captions) == [1, 2, 6, 7, 8, 9, 10]
    assert captions[1] == NFC_CAPTION
    assert captions[2] == "Người đàn ông cầm vợt."


def test_pool_and_single_process_agree(defective, tmp_path):
    annotations, images, _ = defective
    assert audit(annotations, images, tmp_path / "a", workers=2) == audit(
        annotations, images, tmp_path / "b", workers=1
    )
    for name in ("clean.json", "rejects.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("name", ["good.jpg", "grey.jpg", "clear.png", "palette.png", "cmyk.jpg"])
def test_load_rgb_modes(defective, name):
    _, images, _ = defective
    im = load_rgb(images / name)
    assert im.mode == "RGB" and im.size == (48, 32)
    with Image.open(images / name) as original:
        expected = original.convert("RGB") if name != "clear.png" else Image.new(
            "RGB", (48, 32), (255, 255, 255))
        assert np.array_equal(np.asarray(im), np.asarray(expected))
    pixels = np.asarray(im).astype(int)
    if name == "grey.jpg":
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert name == "clear.png" or pixels.std() > 20  # the noise survived the conversion


def test_load_rgb_applies_exif_and_white_background(defective):
    _, images, _ = defective
    assert load_rgb(images / "rotated.jpg").size == (32, 64)
    assert load_rgb(images / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_load_rgb_sixteen_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)


def test_flickr_token_audit_writes_coco(tmp_path):
    images = tmp_path / "Flicker8k_Dataset"
    images.mkdir()
    noise().save(images / "100_a.jpg")
    (tmp_path / "Flickr8k.token.txt").write_text(
        "100_a.jpg#0\tA dog runs .\n100_a.jpg#1\tA dog runs.\n200_b.jpg#0\tA cat .\n",
        encoding="utf-8",
    )
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("100_a.jpg\n200_b.jpg\n")
    report = audit(tmp_path / "Flickr8k.token.txt", images, tmp_path / "out")
    assert report["rejects"]["duplicate_caption"] == 1
    assert report["rejects"]["missing_file"] == 1 and report["rejects"]["orphaned_by_image"] == 1
    clean = json.loads((tmp_path / "out" / "clean.json").read_text(encoding="utf-8"))
    assert clean["images"] == [
        {"id": "100_a.jpg", "file_name": "100_a.jpg", "width": 48, "height": 32,
         "split": "train"}
    ]
    assert clean["annotations"] == [{"id": 1, "image_id": "100_a.jpg", "caption": "A dog runs."}]


def test_flickr_csv_audit(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    noise().save(images / "100_a.jpg")
    (tmp_path / "captions.txt").write_text(
        'image,caption\n100_a.jpg,"A dog, brown, runs ."\n', encoding="utf-8"
    )
    report = audit(tmp_path / "captions.txt", images, tmp_path / "out")
    assert report["images_ok"] == 1 and report["annotations_ok"] == 1
    clean = json.loads((tmp_path / "out" / "clean.json").read_text(encoding="utf-8"))
    assert clean["annotations"][0]["caption"] == "A dog, brown, runs."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json at all", "not valid JSON"),
        ('{"images": {}, "annotations": []}', "not a COCO-style"),
        ('{"images": [{"file_name": "good.jpg"}], "annotations": []}', "images[0] has no 'id'"),
    ],
)
def test_bad_annotations_exit_2(tmp_path, capsys, content, message):
    write_images(tmp_path / "images")
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    assert run_cli(bad, tmp_path / "images", tmp_path / "out") == 2
    assert_one_line_error(capsys, str(bad), message)
    assert not (tmp_path / "out" / "clean.json").exists()


def test_missing_images_folder_exit_2(defective, capsys):
    annotations, images, out = defective
    missing = images.parent / "no_such_folder"
    assert run_cli(annotations, missing, out) == 2
    assert_one_line_error(capsys, str(missing), "images folder not found")
    assert not (out / "clean.json").exists()


def test_output_path_is_a_file_exit_2(defective, capsys):
    annotations, images, out = defective
    out.write_text("in the way", encoding="utf-8")
    assert run_cli(annotations, images, out) == 2
    assert_one_line_error(capsys, str(out), "not a folder")


def test_output_under_a_file_exit_2(defective, capsys):
    annotations, images, out = defective
    out.write_text("in the way", encoding="utf-8")
    assert run_cli(annotations, images, out / "report") == 2
    assert_one_line_error(capsys, str(out / "report"), "cannot create the output folder")


def assert_one_line_error(capsys, file_name, message):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert file_name in lines[0] and message in lines[0]
    assert "Traceback" not in captured.err + captured.out


# ---------------------------------------------------------------- outputs as one set (issue 9)

KILLED_AUDIT = """
import os, signal, sys
import vicap_utils.audit as audit
audit.write_coco = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # after rejects.csv
audit.audit(sys.argv[1], sys.argv[2], sys.argv[3], workers=1)
"""


def outputs(out):
    return {name: (out / name).read_bytes() for name in ("audit.json", "clean.json", "rejects.csv")}


def test_killed_audit_leaves_the_previous_three_outputs_together(defective, tmp_path):
    """Issue 9, item 11: a crash never leaves a new rejects.csv beside an old clean.json."""
    import subprocess
    import sys

    annotations, images, out = defective
    audit(annotations, images, out, workers=1)
    before = outputs(out)
    changed = defective_coco()
    changed["annotations"] = changed["annotations"][:3]
    (tmp_path / "changed.json").write_text(json.dumps(changed, ensure_ascii=False), "utf-8")
    proc = subprocess.run([sys.executable, "-c", KILLED_AUDIT, str(tmp_path / "changed.json"),
                           str(images), str(out)], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    assert outputs(out) == before
    report = audit(tmp_path / "changed.json", images, out, workers=1)
    assert report["annotations_total"] == 3 and outputs(out) != before
    assert not list(out.glob(".vicap-staging-*"))


def test_reaudit_replaces_its_own_outputs_and_keeps_other_files(defective):
    annotations, images, out = defective
    audit(annotations, images, out, workers=1)
    (out / "train.json").write_text("a later split", encoding="utf-8")
    audit(annotations, images, out, workers=1)
    assert (out / "train.json").read_text(encoding="utf-8") == "a later split"
    marker = json.loads((out / ".vicap-owned.json").read_text(encoding="utf-8"))
    assert marker["kinds"] == ["audit"]
    assert marker["entries"] == ["audit.json", "clean.json", "rejects.csv"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".vicap-owned.json", "audit.json", "clean.json", "rejects.csv", "train.json"]


def test_audit_refuses_a_folder_holding_a_users_file_of_an_output_name(defective, capsys):
    annotations, images, out = defective
    out.mkdir()
    (out / "rejects.csv").write_text("my notes", encoding="utf-8")
    assert run_cli(annotations, images, out) == 2
    assert_one_line_error(capsys, str(out / "rejects.csv"), "exists and vicap did not write it")
    assert (out / "rejects.csv").read_text(encoding="utf-8") == "my notes"


def test_reader_rejects_reach_rejects_csv(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "captions.txt").write_text(
        'image,caption\ngood.jpg,"A dog, unterminated\ngood.jpg,A dog .\n'
        "/abs/x.jpg,Absolute .\n", encoding="utf-8")
    report = audit(tmp_path / "captions.txt", tmp_path / "images", tmp_path / "out", workers=1)
    rows = read_rejects(tmp_path / "out")
    assert [(r["kind"], r["id"], r["reason"]) for r in rows] == [
        ("annotation", "1", "malformed_line"), ("image", "/abs/x.jpg", "file_outside_images"),
        ("annotation", "3", "orphaned_by_image")]
    assert rows[0]["detail"] == "line 2: unterminated quote"
    assert report["images_total"] == 2 and report["images_ok"] == 1
    assert report["annotations_total"] == 3 and report["annotations_ok"] == 1


def test_workers_are_checked_before_anything(defective, capsys):
    annotations, images, out = defective
    assert run_cli(annotations, images, out, "--workers", "0") == 2
    assert "--workers must be between 1 and" in capsys.readouterr().err
    assert not out.exists()


UNGUARDED_SCRIPT = """
import sys, threading, time
from vicap_utils.audit import audit
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # as torch's threads do
audit(sys.argv[1], sys.argv[2], sys.argv[3], workers=2)
"""


def test_a_script_without_a_main_guard_is_told_why_its_workers_died(defective, tmp_path):
    """A threaded script calling audit at top level: the workers re-run it and die; vicap's
    error names the missing `if __name__ == '__main__':`, not only memory."""
    import subprocess
    import sys

    annotations, images, out = defective
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(annotations), str(images), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr and "--workers 1" in done.stderr
