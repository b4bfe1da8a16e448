"""Caption sets: COCO-style and Flickr8k readers into one table, COCO writing, seeded split.

The readers are strict and typed. A whole file is refused (one-line VicapError naming it) when
its structure is wrong: not COCO-shaped, an entry without `id`/`file_name`/`image_id`/`caption`,
an id that is not an integer or text, a repeated image id, integer and text ids mixed in one
file (`1` and `"1"`), or a lone surrogate outside a caption. A single bad entry is not fatal: it
is left out of the set and listed in `CaptionSet.rejects` with a reason code, which the audit
writes to rejects.csv: `caption_not_text` (a number, list, object, boolean, NaN or invalid
Unicode where a caption belongs), `file_outside_images` (an absolute `file_name` or one that
climbs out with `..`; its captions are `orphaned_by_image`), `missing_file` (an empty
`file_name`), `malformed_line` (a Flickr8k line without a tab, or with a CSV quoting error such
as an unterminated quote, named by its line number; the lines after it are read normally).
Flickr8k images are keyed by their full file name, so `p0.jpg` and `p0.png` are two images.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vicap_utils.ops.io import VicapError, atomic_write_json, input_file, read_json

if TYPE_CHECKING:
    import pandas as pd

ImageId = int | str

_IMAGE_KEYS = ("id", "file_name")
_ANNOTATION_KEYS = ("id", "image_id", "caption")
_KNOWN_IMAGE_FIELDS = {"id", "file_name", "width", "height", "split"}
_KNOWN_ANNOTATION_FIELDS = {"id", "image_id", "caption"}
# Flickr8k's official split lists, found beside the token file; "dev" is our "val".
FLICKR_SPLIT_FILES = {
    "Flickr_8k.trainImages.txt": "train",
    "Flickr_8k.devImages.txt": "val",
    "Flickr_8k.testImages.txt": "test",
}
SPLIT_OUTPUTS = ("train.json", "val.json", "split.json")
_FORMATS_HINT = "expected COCO-style JSON, Flickr8k.token.txt, or captions.txt with 'image,caption'"
_SURROGATE = re.compile("[\ud800-\udfff]")
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what editors count as lines (not U+2028, not \x1c)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass
class ImageInfo:
    """One image of a caption set; `extra` keeps any other COCO fields (e.g. `scene`)."""

    id: ImageId
    file_name: str
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Annotation:
    """One caption of one image; `extra` keeps any other COCO fields."""

    id: int | str
    image_id: ImageId
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """One rejected image or caption: a row of rejects.csv."""

    kind: str  # "image" or "annotation"
    id: ImageId
    file: str
    reason: str
    detail: str


@dataclass
class CaptionSet:
    """The common table every reader produces: images by id, captions, optional split.

    `extra` keeps top-level COCO keys other than images/annotations (info, licenses, ...).
    `rejects` lists the entries the reader left out (see the module docstring); a subset
    does not carry them.
    """

    images: dict[ImageId, ImageInfo]
    annotations: list[Annotation]
    split: dict[ImageId, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)

    def to_coco(self) -> dict[str, Any]:
        """COCO captions shape; an image's split, when known, is its `split` field."""
        return {
            **self.extra,
            "images": [self._image_entry(info) for info in self.images.values()],
            "annotations": [_annotation_entry(ann) for ann in self.annotations],
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per caption: image_id, file_name, annotation_id, caption."""
        import pandas as pd  # imported here so the audit and split never pay for pandas

        rows = [
            {
                "image_id": ann.image_id,
                "file_name": self._file_name(ann.image_id),
                "annotation_id": ann.id,
                "caption": ann.caption,
            }
            for ann in self.annotations
        ]
        return pd.DataFrame(rows, columns=["image_id", "file_name", "annotation_id", "caption"])

    def captions_by_image(self) -> dict[ImageId, list[str]]:
        """Every image id (in image order) with its captions; unknown image ids are left out."""
        by_image: dict[ImageId, list[str]] = {image_id: [] for image_id in self.images}
        for ann in self.annotations:
            if ann.image_id in by_image:
                by_image[ann.image_id].append(ann.caption)
        return by_image

    def subset(self, image_ids: Iterable[ImageId]) -> CaptionSet:
        """The given images (KeyError for an unknown id) with their captions and split."""
        images = {image_id: self.images[image_id] for image_id in image_ids}
        return CaptionSet(
            images=images,
            annotations=[ann for ann in self.annotations if ann.image_id in images],
            split={i: name for i, name in self.split.items() if i in images},
            extra=dict(self.extra),
        )

    def _image_entry(self, info: ImageInfo) -> dict[str, Any]:
        """One COCO image dict, with size and split when known."""
        entry: dict[str, Any] = {"id": info.id, "file_name": info.file_name, **info.extra}
        if info.width is not None and info.height is not None:
            entry["width"], entry["height"] = info.width, info.height
        if info.id in self.split:
            entry["split"] = self.split[info.id]
        return entry

    def _file_name(self, image_id: ImageId) -> str | None:
        """File name of an image id, None when the id is unknown."""
        info = self.images.get(image_id)
        return info.file_name if info else None


def _annotation_entry(ann: Annotation) -> dict[str, Any]:
    """One COCO annotation dict."""
    return {"id": ann.id, "image_id": ann.image_id, "caption": ann.caption, **ann.extra}


# ---------------------------------------------------------------- readers


def load_captions(path: str | Path, images_dir: str | Path | None = None) -> CaptionSet:
    """Read a caption set, detecting COCO-style JSON, Flickr8k.token.txt or captions.txt.

    Flickr8k split lists are looked up beside the captions file and in `images_dir`.
    """
    path = input_file(path, "captions file")
    if path.suffix.lower() == ".json":
        return read_coco(path)
    text = _read_text(path)
    head = _first_line(text)
    if head.startswith(("{", "[")):
        return read_coco(path)
    if _is_csv_header(head):
        return read_flickr_csv(path, text)
    if _is_token_line(head):
        split_dirs = [path.parent] + ([Path(images_dir)] if images_dir else [])
        return read_flickr_token(path, text, split_dirs)
    raise VicapError(f"{path}: unknown captions format ({_FORMATS_HINT})")


def read_coco(path: str | Path) -> CaptionSet:
    """COCO-style captions JSON (UIT-ViIC): `images` with id/file_name, `annotations` with
    id/image_id/caption; other fields are kept."""
    path = Path(path)
    data = read_json(path, "captions file")
    if not _is_coco_shaped(data):
        raise VicapError(
            f"{path}: not a COCO-style captions file (needs 'images' and 'annotations' lists)"
        )
    image_ids = _IdTypes(path, "image ids")
    annotation_ids = _IdTypes(path, "annotation ids")
    images: dict[ImageId, ImageInfo] = {}
    left_out: dict[ImageId, str] = {}  # image id -> file name, for images the reader rejected
    split: dict[ImageId, str] = {}
    rejects: list[Reject] = []
    for index, entry in enumerate(data["images"]):
        where = f"images[{index}]"
        _require_keys(path, where, entry, _IMAGE_KEYS)
        _refuse_surrogates(path, where, entry)
        image_id, file_name = entry["id"], entry["file_name"]
        image_ids.see(image_id, f"{where} id")
        if not isinstance(file_name, str):
            raise VicapError(f"{path}: {where} 'file_name' must be text")
        if image_id in images or image_id in left_out:
            raise VicapError(f"{path}: {where} repeats image id {_short(image_id)}")
        problem = _file_name_problem(file_name)
        if problem:
            rejects.append(Reject("image", image_id, file_name, *problem))
            left_out[image_id] = file_name
            continue
        images[image_id] = _coco_image(entry)
        if isinstance(entry.get("split"), str):
            split[image_id] = entry["split"]
    annotations = []
    for index, entry in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        _require_keys(path, where, entry, _ANNOTATION_KEYS)
        _refuse_surrogates(path, where, {k: v for k, v in entry.items() if k != "caption"})
        annotation_ids.see(entry["id"], f"{where} id")
        image_ids.see(entry["image_id"], f"{where} image_id")
        reject = _annotation_reject(entry, images, left_out)
        if reject:
            rejects.append(reject)
        else:
            annotations.append(_coco_annotation(entry))
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    _refuse_surrogates(path, "the top level", extra)
    return CaptionSet(images, annotations, split, extra, rejects)


def read_flickr_token(
    path: str | Path, text: str | None = None, split_dirs: Iterable[Path] = ()
) -> CaptionSet:
    """Flickr8k.token.txt (`name.jpg#i<TAB>caption`), with the official split lists when the
    folders in `split_dirs` hold them. A line without a tab is a `malformed_line` reject."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    rows: list[_Row] = []
    for lineno, line in enumerate(_NEWLINE.split(text), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name = (key.rpartition("#")[0] if "#" in key else key).strip()
        problem = None if tab and name else "expected 'name.jpg#N<TAB>caption'"
        rows.append(_Row(len(rows) + 1, lineno, name, caption, problem))
    cs = _from_rows(rows)
    cs.split = _flickr_split(cs, split_dirs)
    return cs


def read_flickr_csv(path: str | Path, text: str | None = None) -> CaptionSet:
    """Flickr8k captions.txt: CSV with header `image,caption`, one caption per line; an
    unquoted comma inside a caption stays part of it. A line with a quoting error (an
    unterminated quote) is a `malformed_line` reject; it never swallows the lines after it."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    lines = list(enumerate(_NEWLINE.split(text), start=1))
    body = [(n, line) for n, line in lines if line.strip()]
    if not body or not _is_csv_header(body[0][1]):
        raise VicapError(f"{path}: expected the CSV header 'image,caption'")
    rows: list[_Row] = []
    for lineno, line in body[1:]:
        number = len(rows) + 1
        try:
            cells = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            rows.append(_Row(number, lineno, line.partition(",")[0].strip(), "",
                             _csv_problem(str(exc))))
            continue
        if len(cells) < 2 or not cells[0].strip():
            rows.append(_Row(number, lineno, "", "", "expected 'image,caption'"))
            continue
        rows.append(_Row(number, lineno, cells[0].strip(), ",".join(cells[1:]), None))
    return _from_rows(rows)


def write_coco(cs: CaptionSet, path: str | Path) -> Path:
    """Write the set as COCO-style JSON, atomically."""
    return atomic_write_json(path, cs.to_coco())


def _read_text(path: Path) -> str:
    """The whole file as text (a UTF-8 BOM dropped), or a one-line error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise VicapError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise VicapError(f"{path}: cannot read ({exc.strerror})") from None


def _first_line(text: str) -> str:
    """The first non-blank line, stripped."""
    return next((line.strip() for line in _NEWLINE.split(text) if line.strip()), "")


def _is_csv_header(line: str) -> bool:
    """True for the `image,caption` header of Flickr8k's captions.txt."""
    return [cell.strip().lower() for cell in line.split(",")] == ["image", "caption"]


def _is_token_line(line: str) -> bool:
    """True for a `name.jpg#i<TAB>caption` line of Flickr8k.token.txt."""
    key, tab, _ = line.partition("\t")
    return bool(tab) and "#" in key


def _is_coco_shaped(data: Any) -> bool:
    """True when the JSON has `images` and `annotations` lists."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    )


def _require_keys(path: Path, where: str, entry: Any, keys: Iterable[str]) -> None:
    """Fail with the file, entry index and key when an entry lacks a required key or an id
    is neither an integer nor non-empty text."""
    if not isinstance(entry, dict):
        raise VicapError(f"{path}: {where} is not an object")
    for key in keys:
        if key not in entry:
            raise VicapError(f"{path}: {where} has no '{key}'")
        value = entry[key]
        if key.endswith("id"):
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise VicapError(f"{path}: {where} '{key}' must be an integer or text")
            if value == "":
                raise VicapError(f"{path}: {where} '{key}' is empty")


class _IdTypes:
    """Remembers where the first integer id and the first text id were seen, so that a file
    mixing the two (`1` and `"1"`, which are different ids) is refused, naming both."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self.first: dict[type, tuple[str, ImageId]] = {}

    def see(self, value: ImageId, where: str) -> None:
        """Note one id; VicapError when it is of the other type than the ones seen before."""
        kind = int if isinstance(value, int) else str
        if kind in self.first:
            return
        self.first[kind] = (where, value)
        if len(self.first) == 2:
            (w_int, v_int), (w_str, v_str) = self.first[int], self.first[str]
            raise VicapError(f"{self.path}: {self.what} mix integers and text ({w_int} is "
                             f"{_short(v_int)}, {w_str} is {_short(v_str)}); use one type")


def _refuse_surrogates(path: Path, where: str, value: Any) -> None:
    """Fail when a string (key or value) inside `value` holds a lone surrogate: such text
    cannot be written as UTF-8 (it comes from a broken `\\ud800`-style escape)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise VicapError(f"{path}: {where} holds text that is not valid Unicode "
                                 f"(a lone surrogate in {_short(item)})")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _file_name_problem(name: str) -> tuple[str, str] | None:
    """(reason, detail) when `name` cannot name a file inside the images folder."""
    if not name.strip():
        return "missing_file", "file_name is empty"
    if "\0" in name:
        return "missing_file", f"file_name {_short(name)} contains a NUL character"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "file_outside_images", f"file_name {_short(name)} is an absolute path"
    if posixpath.normpath(name.replace("\\", "/")).split("/")[0] == "..":
        return "file_outside_images", f"file_name {_short(name)} leads out of the images folder"
    return None


def _annotation_reject(entry: dict[str, Any], images: dict[ImageId, ImageInfo],
                       left_out: dict[ImageId, str]) -> Reject | None:
    """A reader-level reject for a caption of a rejected image or a caption that is not text."""
    image_id = entry["image_id"]
    if image_id in left_out:
        return Reject("annotation", entry["id"], left_out[image_id], "orphaned_by_image",
                      f"image {_short(image_id)} was rejected")
    detail = _caption_problem(entry["caption"])
    if detail is None:
        return None
    info = images.get(image_id)
    return Reject("annotation", entry["id"], info.file_name if info else "", "caption_not_text",
                  detail)


def _caption_problem(caption: Any) -> str | None:
    """Why a caption value is not usable text, None when it is (null counts as empty text)."""
    if caption is None:
        return None
    if isinstance(caption, str):
        match = _SURROGATE.search(caption)
        if match:
            return (f"caption is not valid Unicode (a lone surrogate at character "
                    f"{match.start()})")
        return None
    if isinstance(caption, bool):
        kind = "a boolean"
    elif isinstance(caption, float) and math.isnan(caption):
        kind = "NaN"
    elif isinstance(caption, int | float):
        kind = "a number"
    elif isinstance(caption, list):
        kind = "a list"
    else:
        kind = "an object"
    return f"caption is {kind} ({_short(caption)}), not text"


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (ids can have thousands of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {len(str(abs(value)))} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _coco_image(entry: dict[str, Any]) -> ImageInfo:
    """An ImageInfo from a COCO image dict (size taken only when both are integers)."""
    width, height = entry.get("width"), entry.get("height")
    has_size = all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height))
    return ImageInfo(
        id=entry["id"],
        file_name=entry["file_name"],
        width=width if has_size else None,
        height=height if has_size else None,
        extra={k: v for k, v in entry.items() if k not in _KNOWN_IMAGE_FIELDS},
    )


def _coco_annotation(entry: dict[str, Any]) -> Annotation:
    """An Annotation from a COCO annotation dict; a null caption becomes empty text."""
    caption = entry["caption"]
    return Annotation(
        id=entry["id"],
        image_id=entry["image_id"],
        caption="" if caption is None else caption,
        extra={k: v for k, v in entry.items() if k not in _KNOWN_ANNOTATION_FIELDS},
    )


@dataclass(frozen=True)
class _Row:
    """One non-blank line of a Flickr8k file: caption number, line number, image file name,
    caption, and what is wrong with the line (None when it parsed)."""

    number: int
    lineno: int
    file_name: str
    caption: str
    problem: str | None


def _csv_problem(message: str) -> str:
    """Plain words for the csv module's quoting errors."""
    if "unexpected end of data" in message:
        return "unterminated quote"
    return f"CSV quoting error ({message})"


def _from_rows(rows: Iterable[_Row]) -> CaptionSet:
    """A set from Flickr8k lines: image id = full file name, annotation id = caption number
    (counted over non-blank lines, so a rejected line does not renumber the ones after it)."""
    images: dict[ImageId, ImageInfo] = {}
    left_out: dict[str, str] = {}  # file name -> why the image was rejected
    annotations, rejects = [], []
    for row in rows:
        if row.problem:
            rejects.append(Reject("annotation", row.number, row.file_name, "malformed_line",
                                  f"line {row.lineno}: {row.problem}"))
            continue
        name = row.file_name
        if name not in images and name not in left_out:
            problem = _file_name_problem(name)
            if problem:
                rejects.append(Reject("image", name, name, *problem))
                left_out[name] = problem[0]
            else:
                images[name] = ImageInfo(name, name)
        if name in left_out:
            rejects.append(Reject("annotation", row.number, name, "orphaned_by_image",
                                  f"line {row.lineno}: image {name!r} was rejected"))
            continue
        annotations.append(Annotation(row.number, name, row.caption))
    return CaptionSet(images, annotations, rejects=rejects)


def _flickr_split(cs: CaptionSet, split_dirs: Iterable[Path]) -> dict[ImageId, str]:
    """Image id -> train/val/test from the Flickr_8k.*Images.txt lists that exist."""
    split: dict[ImageId, str] = {}
    for folder in split_dirs:
        for file_name, name in FLICKR_SPLIT_FILES.items():
            list_path = folder / file_name
            if list_path.is_file():
                for line in _read_text(list_path).split():
                    if line in cs.images:
                        split[line] = name
    return split


# ---------------------------------------------------------------- split


def split_by_image(
    cs: CaptionSet, val_fraction: float = 0.1, seed: int = 42
) -> tuple[CaptionSet, CaptionSet]:
    """Seeded train/val split by image, identical on every machine and Python version.

    Images are ranked by sha256("{seed}:{image_id}"); the first round(n * val_fraction) go
    to val, with at least one image on each side when there are two or more.
    """
    if not 0 < val_fraction < 1:
        raise VicapError(f"val_fraction must be between 0 and 1 (got {val_fraction})")
    ranked = sorted(cs.images, key=lambda image_id: _split_key(seed, image_id))
    val_ids = set(ranked[: _val_count(len(ranked), val_fraction)])
    train = cs.subset(i for i in cs.images if i not in val_ids)
    val = cs.subset(i for i in cs.images if i in val_ids)
    return train, val


def _split_key(seed: int, image_id: ImageId) -> str:
    """A platform-independent pseudo-random rank for one image."""
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def _val_count(n_images: int, val_fraction: float) -> int:
    """Validation size: round(n * fraction), kept within 1..n-1 when n >= 2."""
    if n_images < 2:
        return 0
    return min(max(round(n_images * val_fraction), 1), n_images - 1)


def cli_split(args: argparse.Namespace) -> int:
    """`vicap split`: write train.json, val.json and split.json into args.out, as one set."""
    from vicap_utils.ops.folders import output_folder, staged

    if not 0 < args.val_fraction < 1:
        raise VicapError(f"--val-fraction must be between 0 and 1 (got {args.val_fraction})")
    cs = load_captions(args.annotations)
    train, val = split_by_image(cs, args.val_fraction, args.seed)
    record = {
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "train": list(train.images),
        "val": list(val.images),
    }
    inputs = {"--annotations": args.annotations}
    with output_folder(args.out, "split", SPLIT_OUTPUTS, inputs=inputs) as out, \
            staged(out) as tmp:
        write_coco(train, tmp / "train.json")
        write_coco(val, tmp / "val.json")
        atomic_write_json(tmp / "split.json", record)
    print(
        f"split {len(cs.images)} images (seed {args.seed}): {len(train.images)} train, "
        f"{len(val.images)} val -> {out}"
    )
    return 0
