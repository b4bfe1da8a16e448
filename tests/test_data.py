"""Caption readers (UIT-ViIC COCO-style, Flickr8k token/CSV), the common table, the split."""
from __future__ import annotations

import json
import re

import pytest

from vicap_utils.__main__ import main
from vicap_utils.data import (
    Annotation,
    CaptionSet,
    ImageInfo,
    Reject,
    load_captions,
    split_by_image,
    write_coco,
)
from vicap_utils.ops.io import VicapError

UITVIIC = {
    "info": {"description": "UIT-ViIC sample"},
    "images": [
        {"id": 157656, "file_name": "COCO_train2014_000000157656.jpg", "scene": "tennis",
         "width": 640, "height": 480, "coco_url": "http://x/1.jpg"},
        {"id": 317441, "file_name": "COCO_train2014_000000317441.jpg", "scene": "soccer"},
    ],
    "annotations": [
        {"id": 1, "image_id": 157656, "caption": "Một người đàn ông đang chơi quần vợt."},
        {"id": 2, "image_id": 157656, "caption": "Người đàn ông cầm vợt trên sân."},
        {"id": 3, "image_id": 317441, "caption": "Các cầu thủ đang đá bóng, trên sân cỏ."},
    ],
}

TOKEN_LINES = [
    "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up stairs .",
    "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .",
    "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting",
    "",
    "1002674143_1b742ab4b8.jpg#0\tA little girl covered in paint , sits in front of a rainbow .",
]


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def small_set(n_images=10):
    images = {i: ImageInfo(i, f"{i}.jpg") for i in range(1, n_images + 1)}
    annotations = [Annotation(10 * i + k, i, f"ảnh {i} số {k}") for i in images for k in range(2)]
    return CaptionSet(images, annotations)


# ---------------------------------------------------------------- COCO-style


def test_read_uitviic_like(tmp_path):
    cs = load_captions(write_json(tmp_path / "captions.json", UITVIIC))
    assert list(cs.images) == [157656, 317441]
    assert cs.images[157656].width == 640 and cs.images[317441].width is None
    assert cs.captions_by_image()[157656][1] == "Người đàn ông cầm vợt trên sân."
    coco = cs.to_coco()
    assert coco["info"] == UITVIIC["info"]
    assert coco["images"][0]["scene"] == "tennis" and coco["images"][1]["scene"] == "soccer"
    assert coco["images"][0]["coco_url"] == "http://x/1.jpg"
    assert coco["annotations"] == UITVIIC["annotations"]


def test_write_coco_round_trip(tmp_path):
    cs = load_captions(write_json(tmp_path / "captions.json", UITVIIC))
    write_coco(cs, tmp_path / "again.json")
    text = (tmp_path / "again.json").read_text(encoding="utf-8")
    assert "quần vợt" in text  # diacritics written as they are
    assert load_captions(tmp_path / "again.json").to_coco() == cs.to_coco()


def test_to_frame_and_subset(tmp_path):
    cs = load_captions(write_json(tmp_path / "captions.json", UITVIIC))
    frame = cs.to_frame()
    assert list(frame.columns) == ["image_id", "file_name", "annotation_id", "caption"]
    assert len(frame) == 3
    assert frame.loc[2, "file_name"] == "COCO_train2014_000000317441.jpg"
    part = cs.subset([317441])
    assert list(part.images) == [317441]
    assert [a.id for a in part.annotations] == [3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"images": [], "captions": []}', "not a COCO-style captions file"),
        ('[1, 2]', "not a COCO-style captions file"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}], "annotations": []}',
         "images[1] has no 'file_name'"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1}]}',
         "annotations[0] has no 'caption'"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], '
         '"annotations": []}', "images[1] repeats image id 1"),
        ('{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}',
         "images[0] 'id' must be an integer or text"),
        ('{"images": [{"id": true, "file_name": "a.jpg"}], "annotations": []}',
         "images[0] 'id' must be an integer or text"),
    ],
)
def test_bad_coco_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VicapError, match=re.escape(message)) as info:
        load_captions(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_text_format(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("just some words\nand more\n", encoding="utf-8")
    with pytest.raises(VicapError, match="unknown captions format"):
        load_captions(path)


def test_missing_captions_file(tmp_path):
    with pytest.raises(VicapError, match="not found"):
        load_captions(tmp_path / "nope.json")


# ---------------------------------------------------------------- Flickr8k


def test_read_flickr_token_with_split_lists(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("\n".join(TOKEN_LINES) + "\n", encoding="utf-8")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text(
        "1000268201_693b08cb0e.jpg\n1001773457_577c3a7d70.jpg\n", encoding="utf-8"
    )
    (tmp_path / "Flickr_8k.devImages.txt").write_text("1002674143_1b742ab4b8.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("9999_unlisted.jpg\n")
    cs = load_captions(token)
    assert list(cs.images) == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg",
                               "1002674143_1b742ab4b8.jpg"]
    assert cs.images["1000268201_693b08cb0e.jpg"].file_name == "1000268201_693b08cb0e.jpg"
    assert [a.id for a in cs.annotations] == [1, 2, 3, 4]
    assert cs.captions_by_image()["1000268201_693b08cb0e.jpg"] == [
        "A child in a pink dress is climbing up stairs .",
        "A girl going into a wooden building .",
    ]
    assert cs.split == {
        "1000268201_693b08cb0e.jpg": "train",
        "1001773457_577c3a7d70.jpg": "train",
        "1002674143_1b742ab4b8.jpg": "val",
    }
    assert cs.to_coco()["images"][2]["split"] == "val"


def test_read_flickr_token_without_split_lists(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text(TOKEN_LINES[0] + "\n", encoding="utf-8")
    cs = load_captions(token)
    assert cs.split == {} and len(cs.annotations) == 1


def test_read_flickr_token_bad_line_is_a_reject_with_its_line_number(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text(TOKEN_LINES[0] + "\n\nbroken line without tab\n" + TOKEN_LINES[1] + "\n",
                     encoding="utf-8")
    cs = load_captions(token)
    assert [(a.id, a.caption) for a in cs.annotations] == [
        (1, "A child in a pink dress is climbing up stairs ."),
        (3, "A girl going into a wooden building .")]
    assert cs.rejects == [Reject("annotation", 2, "broken line without tab", "malformed_line",
                                 "line 3: expected 'name.jpg#N<TAB>caption'")]


def test_flickr_token_line_numbers_count_only_real_line_breaks(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\tOne\u2028two\x1cthree\nb.jpg#0\tok\nno tab here\n",
                     encoding="utf-8")
    cs = load_captions(token)
    assert cs.annotations[0].caption == "One\u2028two\x1cthree"
    assert cs.rejects[0].detail.startswith("line 3:")


def test_flickr_images_are_keyed_by_full_file_name(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("p0.jpg#0\tA jpeg .\np0.png#0\tA png .\n", encoding="utf-8")
    cs = load_captions(token)
    assert {i: info.file_name for i, info in cs.images.items()} == {"p0.jpg": "p0.jpg",
                                                                   "p0.png": "p0.png"}
    assert cs.captions_by_image() == {"p0.jpg": ["A jpeg ."], "p0.png": ["A png ."]}


def test_read_flickr_captions_csv_with_commas(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text(
        "image,caption\n"
        '1000268201_693b08cb0e.jpg,"A child, in a pink dress, climbs stairs ."\n'
        "1000268201_693b08cb0e.jpg,A girl going into a wooden building .\n"
        "1001773457_577c3a7d70.jpg,A black dog , and a spotted dog\n",
        encoding="utf-8",
    )
    cs = load_captions(path)
    assert list(cs.images) == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    by_image = cs.captions_by_image()
    assert by_image["1000268201_693b08cb0e.jpg"][0] == "A child, in a pink dress, climbs stairs ."
    assert by_image["1001773457_577c3a7d70.jpg"] == ["A black dog , and a spotted dog"]
    assert cs.rejects == []


def test_flickr_csv_unterminated_quote_is_one_reject_and_swallows_nothing(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text('image,caption\na.jpg,A dog .\nb.jpg,"A cat, on a mat\nc.jpg,A bird .\n'
                    'd.jpg,"Two, birds" fly\ne.jpg,"A fish, swims ."\n', encoding="utf-8")
    cs = load_captions(path)
    assert [(a.id, a.image_id, a.caption) for a in cs.annotations] == [
        (1, "a.jpg", "A dog ."), (3, "c.jpg", "A bird ."), (5, "e.jpg", "A fish, swims .")]
    assert [(r.id, r.file, r.reason, r.detail) for r in cs.rejects] == [
        (2, "b.jpg", "malformed_line", "line 3: unterminated quote"),
        (4, "d.jpg", "malformed_line", "line 5: CSV quoting error (',' expected after '\"')")]


# ---------------------------------------------------------------- split


def test_split_hard_coded_expectation():
    train, val = split_by_image(small_set(10), val_fraction=0.3, seed=42)
    assert list(train.images) == [2, 3, 5, 7, 8, 9, 10]
    assert list(val.images) == [1, 4, 6]
    train, val = split_by_image(small_set(10), val_fraction=0.3, seed=7)
    assert list(val.images) == [3, 4, 7]


def test_split_string_ids_hard_coded():
    cs = CaptionSet({s: ImageInfo(s, f"{s}.jpg") for s in "abcde"}, [])
    train, val = split_by_image(cs, val_fraction=0.4, seed=0)
    assert (list(train.images), list(val.images)) == (["b", "c", "e"], ["a", "d"])


def test_split_deterministic_disjoint_and_by_image():
    cs = small_set(50)
    first = split_by_image(cs, 0.2, seed=3)
    second = split_by_image(cs, 0.2, seed=3)
    assert [list(s.images) for s in first] == [list(s.images) for s in second]
    train, val = first
    assert len(val.images) == 10 and len(train.images) == 40
    assert not set(train.images) & set(val.images)
    assert {a.image_id for a in train.annotations} == set(train.images)
    assert {a.image_id for a in val.annotations} == set(val.images)
    assert len(train.annotations) + len(val.annotations) == len(cs.annotations)
    other = split_by_image(cs, 0.2, seed=4)[1]
    assert list(other.images) != list(val.images)


@pytest.mark.parametrize(("n_images", "n_val"), [(2, 1), (3, 1), (10, 1), (1, 0)])
def test_split_keeps_one_image_each_side(n_images, n_val):
    train, val = split_by_image(small_set(n_images), val_fraction=0.01)
    assert len(val.images) == n_val
    assert len(train.images) == n_images - n_val


def test_split_rejects_bad_fraction():
    with pytest.raises(VicapError, match="val_fraction"):
        split_by_image(small_set(4), val_fraction=1.5)


def test_cli_split_writes_three_files(tmp_path, capsys):
    source = tmp_path / "clean.json"
    write_coco(small_set(10), source)
    out = tmp_path / "split"
    args = ["split", "--annotations", str(source), "--out", str(out), "--val-fraction", "0.3"]
    assert main(args) == 0
    record = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert record == {"seed": 42, "val_fraction": 0.3,
                      "train": [2, 3, 5, 7, 8, 9, 10], "val": [1, 4, 6]}
    train = json.loads((out / "train.json").read_text(encoding="utf-8"))
    val = json.loads((out / "val.json").read_text(encoding="utf-8"))
    assert [im["id"] for im in train["images"]] == record["train"]
    assert {a["image_id"] for a in val["annotations"]} == {1, 4, 6}
    assert "3 val" in capsys.readouterr().out


def test_cli_split_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops", encoding="utf-8")
    assert main(["split", "--annotations", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "train.json").exists()


@pytest.mark.parametrize(("out", "message"), [("a_file", "exists and is not a folder"),
                                              ("a_file/split", "cannot create the output folder")])
def test_cli_split_unusable_out_exits_2(tmp_path, capsys, out, message):
    source = write_coco(small_set(4), tmp_path / "clean.json")
    (tmp_path / "a_file").write_text("in the way", encoding="utf-8")
    assert main(["split", "--annotations", str(source), "--out", str(tmp_path / out)]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert str(tmp_path / out) in captured.err and message in captured.err
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "in the way"


# ---------------------------------------------------------------- strict, typed readers


def with_change(tmp_path, change):
    data = json.loads(json.dumps(UITVIIC))
    change(data)
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data), encoding="utf-8")  # ASCII escapes keep lone surrogates
    return path


@pytest.mark.parametrize(("value", "detail"), [
    (42, "caption is a number (42), not text"),
    (4.5, "caption is a number (4.5), not text"),
    (float("nan"), "caption is NaN (nan), not text"),
    (True, "caption is a boolean (True), not text"),
    (["a"], "caption is a list (['a']), not text"),
    ({"vi": "a"}, "caption is an object ({'vi': 'a'}), not text"),
    ("ab\ud800c", "caption is not valid Unicode (a lone surrogate at character 2)"),
])
def test_caption_that_is_not_text_is_a_reject(tmp_path, value, detail):
    cs = load_captions(with_change(tmp_path, lambda d: d["annotations"][1].update(caption=value)))
    assert [a.id for a in cs.annotations] == [1, 3]
    assert cs.rejects == [Reject("annotation", 2, "COCO_train2014_000000157656.jpg",
                                 "caption_not_text", detail)]


def test_null_caption_is_empty_text(tmp_path):
    cs = load_captions(with_change(tmp_path, lambda d: d["annotations"][0].update(caption=None)))
    assert cs.annotations[0].caption == "" and cs.rejects == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["images"][1].update(id="317441"),
     "image ids mix integers and text (images[0] id is 157656, images[1] id is '317441'); "
     "use one type"),
    (lambda d: d["annotations"][2].update(image_id="317441"),
     "image ids mix integers and text (images[0] id is 157656, annotations[2] image_id is "
     "'317441')"),
    (lambda d: d["annotations"][0].update(id="1"),
     "annotation ids mix integers and text (annotations[1] id is 2, annotations[0] id is '1')"),
    (lambda d: d["images"][0].update(file_name=7), "images[0] 'file_name' must be text"),
    (lambda d: d["images"][0].update(file_name="a\udc80.jpg"),
     "images[0] holds text that is not valid Unicode (a lone surrogate in 'a\\udc80.jpg')"),
    (lambda d: d["info"].update(description="\ud800"),
     "the top level holds text that is not valid Unicode"),
    (lambda d: d["annotations"][0].update(id=""), "annotations[0] 'id' is empty"),
])
def test_structural_problems_refuse_the_file(tmp_path, change, message):
    path = with_change(tmp_path, change)
    with pytest.raises(VicapError) as info:
        load_captions(path)
    assert str(info.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize(("file_name", "reason", "detail"), [
    ("/data/x.jpg", "file_outside_images", "file_name '/data/x.jpg' is an absolute path"),
    ("C:\\data\\x.jpg", "file_outside_images", "is an absolute path"),
    ("../x.jpg", "file_outside_images", "file_name '../x.jpg' leads out of the images folder"),
    ("a/../../x.jpg", "file_outside_images", "leads out of the images folder"),
    ("..\\x.jpg", "file_outside_images", "leads out of the images folder"),
    ("", "missing_file", "file_name is empty"),
    ("x\x00.jpg", "missing_file", "contains a NUL character"),
])
def test_file_names_outside_the_images_folder_are_rejects(tmp_path, file_name, reason, detail):
    cs = load_captions(with_change(tmp_path,
                                   lambda d: d["images"][0].update(file_name=file_name)))
    assert list(cs.images) == [317441] and [a.id for a in cs.annotations] == [3]
    image, *captions = cs.rejects
    assert (image.kind, image.id, image.reason) == ("image", 157656, reason)
    assert detail in image.detail
    assert [(r.id, r.reason) for r in captions] == [(1, "orphaned_by_image"),
                                                   (2, "orphaned_by_image")]


def test_relative_file_names_inside_the_folder_are_kept(tmp_path):
    cs = load_captions(with_change(tmp_path,
                                   lambda d: d["images"][0].update(file_name="a/../b/x.jpg")))
    assert cs.images[157656].file_name == "a/../b/x.jpg" and cs.rejects == []


def test_subset_does_not_carry_rejects(tmp_path):
    cs = load_captions(with_change(tmp_path, lambda d: d["annotations"][1].update(caption=1)))
    assert len(cs.rejects) == 1 and cs.subset([157656]).rejects == []


# ---------------------------------------------------------------- split outputs (issue 9)


def test_cli_split_outputs_are_one_owned_set(tmp_path):
    source = write_coco(small_set(10), tmp_path / "clean.json")
    out = tmp_path / "split"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    for seed in ("1", "2"):
        assert main(["split", "--annotations", str(source), "--out", str(out),
                     "--seed", seed]) == 0
    assert json.loads((out / "split.json").read_text(encoding="utf-8"))["seed"] == 2
    assert json.loads((out / ".vicap-owned.json").read_text(encoding="utf-8"))["entries"] == [
        "split.json", "train.json", "val.json"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_cli_split_refuses_to_write_over_its_input(tmp_path, capsys):
    out = tmp_path / "split"
    out.mkdir()
    source = write_coco(small_set(4), out / "train.json")
    before = source.read_bytes()
    assert main(["split", "--annotations", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{source}: --out would write over the input {source} (--annotations)" in err
    assert source.read_bytes() == before
