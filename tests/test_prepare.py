"""Training consumes the audited data: planted defects never reach a batch; the audit is cached
by fingerprint; the prepared folder never takes over a user's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vicap_utils.config import load_config
from vicap_utils.ops.io import VicapError
from vicap_utils.prepare import prepare
from vicap_utils.toy.data import generate
from vicap_utils.vocab import canonical

PLANTED = {  # captions that must never be trained on, and why
    "missing": "ảnh này đã bị xoá khỏi thư mục",  # its image file is gone
    "broken": "ảnh này bị cắt cụt giữa chừng",  # its JPEG is truncated
    "unknown": "chú thích của một ảnh không tồn tại",  # image id not in images
    "dup_id": "chú thích trùng mã số với chú thích khác",  # annotation id already used
}
TWICE = "một vận động viên ghi bàn thắng đẹp mắt"  # listed twice for one image: kept once


def planted_set(root: Path) -> tuple[Path, Path, dict]:
    """A 14-image synthetic set with one defect of each kind planted in it."""
    generate(root, n_images=14, seed=5)
    path = root / "captions.json"
    coco = json.loads(path.read_text(encoding="utf-8"))
    images = {im["id"]: im for im in coco["images"]}
    anns = coco["annotations"]
    (root / "images" / images[1]["file_name"]).unlink()
    broken = root / "images" / images[2]["file_name"]
    broken.write_bytes(broken.read_bytes()[:200])
    for ann in anns:
        if ann["image_id"] == 1:
            ann["caption"] = PLANTED["missing"]
        if ann["image_id"] == 2:
            ann["caption"] = PLANTED["broken"]
    anns[:] = [a for a in anns if a["image_id"] != 3]  # image 3 keeps no caption
    next_id = max(a["id"] for a in anns) + 1
    kept_id = next(a["id"] for a in anns if a["image_id"] == 7)
    anns += [
        {"id": next_id, "image_id": 4, "caption": "   "},
        {"id": next_id + 1, "image_id": 999, "caption": PLANTED["unknown"]},
        {"id": kept_id, "image_id": 5, "caption": PLANTED["dup_id"]},
        {"id": next_id + 2, "image_id": 6, "caption": TWICE},
        {"id": next_id + 3, "image_id": 6, "caption": TWICE},
    ]
    path.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    return path, root / "images", images


def config(annotations: Path, images: Path, *extra: str):
    return load_config("mini", overrides=[f"data.train_annotations={annotations}",
                                          f"data.images={images}", "data.val_fraction=0.25",
                                          "train.batch_size=4", *extra])


@pytest.mark.slow
def test_planted_defects_never_reach_a_training_batch(tmp_path, capsys):
    from vicap_utils.train import Trainer

    annotations, images, infos = planted_set(tmp_path / "raw")
    trainer = Trainer(config(annotations, images), tmp_path / "run")
    audit = json.loads((tmp_path / "run" / "data" / "audit.json").read_text())
    assert {k: v for k, v in audit["rejects"].items() if v} == {
        "missing_file": 1, "unreadable_image": 1, "image_without_captions": 1,
        "empty_caption": 1, "unknown_image_id": 1, "duplicate_annotation_id": 1,
        "duplicate_caption": 1, "orphaned_by_image": 10}
    assert "audit rejected" in capsys.readouterr().out

    seen = []
    for batch in trainer.loader:
        seen += trainer.cap.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    seen = [canonical(t) for t in seen]
    assert len(seen) == len(trainer.examples.train) > 0
    for why, caption in PLANTED.items():
        assert canonical(caption) not in seen, why
    kept = set(trainer.data.train.images) | set(trainer.data.val.images)
    assert kept.isdisjoint({1, 2, 3}) and len(kept) == 11
    assert seen.count(canonical(TWICE)) == (1 if 6 in trainer.data.train.images else 0)
    rows = set(trainer.examples.train.image_rows)
    assert rows == set(range(len(trainer.data.train.images)))


def test_prepared_data_is_reused_until_an_input_changes(tmp_path):
    generate(tmp_path / "raw", n_images=10, seed=1)
    annotations, images = tmp_path / "raw" / "captions.json", tmp_path / "raw" / "images"
    logs: list[str] = []
    first = prepare(config(annotations, images), tmp_path / "data", log=logs.append)
    assert not first.reused and (tmp_path / "data" / "prepared.json").is_file()
    again = prepare(config(annotations, images), tmp_path / "data", log=logs.append)
    assert again.reused and again.fingerprint == first.fingerprint
    assert "reused" in logs[-1]
    assert list(again.val.images) == list(first.val.images)
    other_split = prepare(config(annotations, images, "data.split_seed=7"), tmp_path / "data")
    assert not other_split.reused and other_split.fingerprint != first.fingerprint
    picture = next(images.iterdir())
    os.utime(picture, ns=(1, 1))
    assert not prepare(config(annotations, images, "data.split_seed=7"), tmp_path / "data").reused


def test_prepare_never_writes_over_a_users_file_or_its_own_input(tmp_path):
    generate(tmp_path / "raw", n_images=4, seed=2)
    annotations, images = tmp_path / "raw" / "captions.json", tmp_path / "raw" / "images"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.json").write_text("my own file")
    with pytest.raises(VicapError, match="train.json: exists and vicap did not write it"):
        prepare(config(annotations, images), mine)
    assert (mine / "train.json").read_text() == "my own file"
    own = mine / "train.json"
    own.write_text((tmp_path / "raw" / "captions.json").read_text(encoding="utf-8"),
                   encoding="utf-8")
    with pytest.raises(VicapError, match="would write over the input"):
        prepare(config(own, images), mine)
    assert own.read_text(encoding="utf-8") == annotations.read_text(encoding="utf-8")


def test_uitviic_official_splits_with_images_in_another_data_set(tmp_path, monkeypatch):
    """UIT-ViIC as distributed: three caption files in one Kaggle data set, the COCO images
    (train2017/, val2017/) in another; its own validation and test files are used as they are."""
    from PIL import Image

    root = tmp_path / "kaggle"
    ann = root / "input" / "datasets" / "someone" / "uit-viic"
    coco = root / "input" / "datasets" / "other" / "coco-2017"
    files = {"train": ("train2017", range(1, 9)), "val": ("val2017", range(20, 23)),
             "test": ("val2017", range(30, 33))}
    ann.mkdir(parents=True)
    for split, (folder, ids) in files.items():
        (coco / folder).mkdir(parents=True, exist_ok=True)
        images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]
        for im in images:
            Image.new("RGB", (32, 24), (10 * im["id"] % 255, 80, 120)).save(
                coco / folder / im["file_name"])
        anns = [{"id": 100 * i + k, "image_id": i, "caption": f"cầu thủ số {i} đang chơi {k}"}
                for i in ids for k in range(2)]
        (ann / f"uitviic_captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns}, ensure_ascii=False))
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(root))
    data = prepare(load_config("uitviic-blip"), tmp_path / "data")
    assert sorted(data.train.images) == list(range(1, 9))
    assert sorted(data.val.images) == [20, 21, 22] and sorted(data.test.images) == [30, 31, 32]
    assert data.train_images == coco / "train2017" and data.val_images == coco / "val2017"
    assert data.test_images == coco / "val2017"
    assert json.loads((tmp_path / "data" / "test.json").read_text())["images"]


def test_a_shared_data_folder_refusal_names_the_data_folder_not_out(tmp_path):
    generate(tmp_path / "raw", n_images=4, seed=2)
    cfg = config(tmp_path / "raw" / "captions.json", tmp_path / "raw" / "images")
    shared = tmp_path / "shared"
    hold = ("import sys, time\nfrom vicap_utils.ops.folders import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n"
            "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(shared)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(VicapError) as info:
            prepare(cfg, shared)
    finally:
        proc.kill()
        proc.wait()
    assert str(info.value) == (f"{shared}: is in use by process {proc.pid}; wait for it or "
                               "pick another data folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "val.json").write_text("my own file")
    with pytest.raises(VicapError) as info:
        prepare(cfg, tmp_path / "mine")
    assert str(info.value).endswith("val.json: exists and vicap did not write it; move it away "
                                    "or pick another data folder")
