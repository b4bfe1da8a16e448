"""Data sets as distributed, found under a fake Kaggle root in each mount layout."""
from __future__ import annotations

import json
from pathlib import Path

from vicap_utils.ops import env


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def coco_captions(path: Path, names: list[str]) -> Path:
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    anns = [{"id": i, "image_id": i, "caption": "Một người đang chơi bóng."}
            for i in range(len(names))]
    return touch(path, json.dumps({"images": images, "annotations": anns}))


def test_uitviic_three_files_with_coco_images_in_another_data_set(monkeypatch, tmp_path):
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    inp = tmp_path / "input"
    ann = inp / "datasets" / "someone" / "uit-viic"
    train_names = [f"{i:012d}.jpg" for i in range(1, 41)]
    val_names = [f"{i:012d}.jpg" for i in range(100, 110)]
    files = {s: coco_captions(ann / f"uitviic_captions_{s}2017.json", names)
             for s, names in (("train", train_names), ("val", val_names), ("test", val_names))}
    # A stray copy of the val file in another data set must not be paired with this train file.
    coco_captions(inp / "other" / "deep" / "er" / "uitviic_captions_val2017.json", val_names)
    coco = inp / "coco-2017-dataset" / "coco2017"
    for name in train_names:
        touch(coco / "train2017" / name)
    for name in val_names:
        touch(coco / "val2017" / name)
    touch(coco / "annotations" / "captions_train2017.json", "{}")

    found = env.discover_data("uitviic-blip")
    assert (found.train, found.val, found.test) == (files["train"], files["val"], files["test"])
    assert found.found and found.val is not None and found.captions is None
    assert set(found.image_dirs) == {coco / "train2017", coco / "val2017"}
    assert env.find_image_folder(train_names) == coco / "train2017"
    assert env.find_image_folder(val_names, [inp]) == coco / "val2017"
    assert env.find_image_folder(["000000999999.jpg"]) is None


def test_uitviic_v2_copy_without_test_file_and_flat_image_folder(tmp_path):
    root = tmp_path / "input" / "uit-viic"
    train = coco_captions(root / "annotations" / "uitviic_captions_train2017_v2.json", ["a.jpg"])
    val = coco_captions(root / "annotations" / "uitviic_captions_val2017_v2.json", ["b.jpg"])
    touch(root / "uitviic_train2017" / "a.jpg")
    touch(root / "uitviic_val2017" / "b.jpg")
    found = env.discover_data("uitviic-blip", tmp_path / "input")
    assert (found.train, found.val, found.test) == (train, val, None)
    assert found.image_dirs[:2] == (root / "uitviic_train2017", root / "uitviic_val2017")
    assert env.find_image_folder(["train2017/a.jpg"], [tmp_path]) == root / "uitviic_train2017"


def test_flickr8k_token_file_with_official_split_lists(monkeypatch, tmp_path):
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    data = tmp_path / "input" / "flickr8k" / "Flickr_Data" / "Flickr_Data"
    text = data / "Flickr_TextData"
    token = touch(text / "Flickr8k.token.txt", "1000268201_693b08cb0e.jpg#0\tA child.\n")
    lists = {s: touch(text / f"Flickr_8k.{n}Images.txt", "1000268201_693b08cb0e.jpg\n")
             for s, n in (("train", "train"), ("val", "dev"), ("test", "test"))}
    touch(data / "Images" / "1000268201_693b08cb0e.jpg")
    found = env.discover_data("flickr8k-blip2")
    assert found.captions == token and found.val is not None
    assert (found.train, found.val, found.test) == (lists["train"], lists["val"], lists["test"])
    assert found.image_dirs == (data / "Images",)
    assert env.find_image_folder(["1000268201_693b08cb0e.jpg"]) == data / "Images"


def test_flickr8k_captions_csv_without_split_lists_in_the_datasets_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    root = tmp_path / "input" / "datasets" / "adityajn105" / "flickr8k"
    captions = touch(root / "captions.txt", "image,caption\na.jpg,A dog.\n")
    (root / "Images").mkdir()
    found = env.discover_data("flickr8k-blip2")
    assert found.captions == captions and not found.val is not None
    assert (found.train, found.test, found.image_dirs) == (None, None, (root / "Images",))


def test_nothing_attached(monkeypatch, tmp_path):
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path / "nowhere"))
    for profile in ("uitviic-blip", "flickr8k-blip2", "mini"):
        found = env.discover_data(profile)
        assert not found.found and found.image_dirs == ()
    assert env.find_image_folder(["a.jpg"]) is None and env.find_image_folder([]) is None
