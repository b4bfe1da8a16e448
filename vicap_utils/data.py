"""Caption sets: COCO-style and Flickr8k readers into one table (a bad file refused in one line,
a bad entry left out in `rejects`), COCO writing, seeded split."""

import argparse
import csv
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vicap_utils.ops import checks
from vicap_utils.ops.env import FLICKR_SPLIT_LISTS
from vicap_utils.ops.folders import output_folder, staged
from vicap_utils.ops.io import VicapError, atomic_write_json, input_file, read_json

if TYPE_CHECKING:
    import pandas as pd

ImageId = int | str

_ANNOTATION_KEYS = ("id", "image_id", "caption")
_KNOWN_IMAGE_FIELDS = {"id", "file_name", "width", "height", "split"}
_FORMATS_HINT = "expected COCO-style JSON, Flickr8k.token.txt, or captions.txt with 'image,caption'"
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what editors count as lines (not U+2028, not \x1c)
# A non-blank Flickr8k line: line number, file name, caption, why it does not parse (or None).
_Row = tuple[int, str, str, str | None]


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
    """The table every reader produces: images by id, captions, optional split, the other
    top-level COCO keys (`extra`) and the entries the reader left out (`rejects`)."""

    images: dict[ImageId, ImageInfo]
    annotations: list[Annotation]
    split: dict[ImageId, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)

    def to_coco(self) -> dict[str, Any]:
        """COCO captions shape; an image's split, when known, is its `split` field."""
        images = []
        for info in self.images.values():
            entry: dict[str, Any] = {"id": info.id, "file_name": info.file_name, **info.extra}
            if info.width is not None and info.height is not None:
                entry["width"], entry["height"] = info.width, info.height
            if info.id in self.split:
                entry["split"] = self.split[info.id]
            images.append(entry)
        annotations = [{"id": ann.id, "image_id": ann.image_id, "caption": ann.caption,
                        **ann.extra} for ann in self.annotations]
        return {**self.extra, "images": images, "annotations": annotations}

    def to_frame(self) -> "pd.DataFrame":
        """One row per caption: image_id, file_name, annotation_id, caption."""
        import pandas as pd  # pandas: slow to import, and the audit and split never need it

        names = {image_id: info.file_name for image_id, info in self.images.items()}
        rows = [(ann.image_id, names.get(ann.image_id), ann.id, ann.caption)
                for ann in self.annotations]
        return pd.DataFrame(rows, columns=["image_id", "file_name", "annotation_id", "caption"])

    def captions_by_image(self) -> dict[ImageId, list[str]]:
        """Every image id (in image order) with its captions; unknown image ids are left out."""
        by_image: dict[ImageId, list[str]] = {image_id: [] for image_id in self.images}
        for ann in self.annotations:
            if ann.image_id in by_image:
                by_image[ann.image_id].append(ann.caption)
        return by_image

    def subset(self, image_ids: Iterable[ImageId]) -> "CaptionSet":
        """The given images (KeyError for an unknown id) with their captions and split."""
        images = {image_id: self.images[image_id] for image_id in image_ids}
        return CaptionSet(images, [ann for ann in self.annotations if ann.image_id in images],
                          {i: name for i, name in self.split.items() if i in images},
                          dict(self.extra))


def load_captions(path: str | Path, images_dir: str | Path | None = None) -> CaptionSet:
    """Read COCO-style JSON, Flickr8k.token.txt (its split lists looked up beside it and in
    `images_dir`) or Flickr8k's captions.txt."""
    path = input_file(path, "captions file")
    if path.suffix.lower() == ".json":
        return _read_coco(path)
    text = _read_text(path)
    head = next((line.strip() for line in _NEWLINE.split(text) if line.strip()), "")
    if head.startswith(("{", "[")):
        return _read_coco(path)
    if [cell.strip().lower() for cell in head.split(",")] == ["image", "caption"]:
        return _read_flickr_csv(text)
    if "\t" in head and "#" in head.partition("\t")[0]:  # name.jpg#i<TAB>caption
        return _read_flickr_token(text, [path.parent, *([Path(images_dir)] if images_dir else [])])
    raise VicapError(f"{path}: unknown captions format ({_FORMATS_HINT})")


def _read_coco(path: Path) -> CaptionSet:
    """COCO-style captions JSON (UIT-ViIC): `images` with id/file_name, `annotations` with
    id/image_id/caption; other fields are kept."""
    data = read_json(path, "captions file")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise VicapError(f"{path}: not a COCO-style captions file (needs 'images' and "
                         "'annotations' lists)")
    image_ids: dict[type, tuple[str, ImageId]] = {}  # int/str -> where the first was seen
    annotation_ids: dict[type, tuple[str, ImageId]] = {}
    images: dict[ImageId, ImageInfo] = {}
    listed: dict[ImageId, str] = {}  # every image id -> its file name, rejected ones too
    split: dict[ImageId, str] = {}
    rejects: list[Reject] = []
    for index, entry in enumerate(data["images"]):
        where = f"images[{index}]"
        checks.require_keys(path, where, entry, ("id", "file_name"))
        checks.refuse_surrogates(path, where, entry)
        image_id, file_name = entry["id"], entry["file_name"]
        checks.one_id_type(path, "image ids", image_ids, image_id, f"{where} id is")
        if not isinstance(file_name, str):
            raise VicapError(f"{path}: {where} 'file_name' must be text")
        if image_id in listed:
            raise VicapError(f"{path}: {where} repeats image id {checks.short(image_id)}")
        listed[image_id] = file_name
        problem = checks.file_name_problem(file_name)
        if problem:
            rejects.append(Reject("image", image_id, file_name, *problem))
            continue
        width, height = entry.get("width"), entry.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
            width = height = None  # a size is kept only when both are integers
        images[image_id] = ImageInfo(image_id, file_name, width, height,
                                     _others(entry, _KNOWN_IMAGE_FIELDS))
        if isinstance(entry.get("split"), str):
            split[image_id] = entry["split"]
    annotations = []
    for index, entry in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        checks.require_keys(path, where, entry, _ANNOTATION_KEYS)
        checks.refuse_surrogates(path, where, _others(entry, {"caption"}))
        checks.one_id_type(path, "annotation ids", annotation_ids, entry["id"], f"{where} id is")
        checks.one_id_type(path, "image ids", image_ids, entry["image_id"], f"{where} image_id is")
        image_id, problem = entry["image_id"], checks.caption_problem(entry["caption"])
        if image_id in listed and image_id not in images:
            rejects.append(Reject("annotation", entry["id"], listed[image_id], "orphaned_by_image",
                                  f"image {checks.short(image_id)} was rejected"))
        elif problem:
            rejects.append(Reject("annotation", entry["id"], listed.get(image_id, ""),
                                  "caption_not_text", problem))
        else:  # a null caption becomes empty text
            annotations.append(Annotation(entry["id"], entry["image_id"], entry["caption"] or "",
                                          _others(entry, set(_ANNOTATION_KEYS))))
    extra = _others(data, {"images", "annotations"})
    checks.refuse_surrogates(path, "the top level", extra)
    return CaptionSet(images, annotations, split, extra, rejects)


def _read_flickr_token(text: str, split_dirs: Iterable[Path]) -> CaptionSet:
    """Flickr8k.token.txt (`name.jpg#i<TAB>caption`), with the official split lists when the
    folders in `split_dirs` hold them. A line without a tab is a `malformed_line` reject."""
    rows: list[_Row] = []
    for lineno, line in enumerate(_NEWLINE.split(text), start=1):
        if line.strip():
            key, tab, caption = line.partition("\t")
            name = (key.rpartition("#")[0] if "#" in key else key).strip()
            rows.append((lineno, name, caption,
                         None if tab and name else "expected 'name.jpg#N<TAB>caption'"))
    cs = _from_rows(rows)
    for folder in split_dirs:
        for split_name, file_name in FLICKR_SPLIT_LISTS.items():
            if (folder / file_name).is_file():
                names = _read_text(folder / file_name).split()
                cs.split.update({name: split_name for name in names if name in cs.images})
    return cs


def _read_flickr_csv(text: str) -> CaptionSet:
    """Flickr8k captions.txt: CSV after the header `image,caption`; an unquoted comma inside a
    caption stays part of it; a quoting error is a `malformed_line` reject of that line only."""
    body = [(n, line) for n, line in enumerate(_NEWLINE.split(text), start=1) if line.strip()]
    rows: list[_Row] = []
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a caption may pass 128 KB
    for lineno, line in body[1:]:
        try:
            cells = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            problem = ("unterminated quote" if "unexpected end of data" in str(exc)
                       else f"CSV quoting error ({exc})")
            rows.append((lineno, line.partition(",")[0].strip(), "", problem))
        else:
            good = len(cells) >= 2 and cells[0].strip()
            rows.append((lineno, cells[0].strip(), ",".join(cells[1:]), None) if good
                        else (lineno, "", "", "expected 'image,caption'"))
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


def _others(entry: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The fields of `entry` outside `known`, kept as they are."""
    return {k: v for k, v in entry.items() if k not in known}


def _from_rows(rows: list[_Row]) -> CaptionSet:
    """A set from Flickr8k lines: image id = full file name, annotation id = caption number
    (counted over non-blank lines, so a rejected line does not renumber the ones after it)."""
    problems: dict[str, tuple[str, str] | None] = {}  # file name -> why it is rejected, or None
    annotations, rejects = [], []
    for number, (lineno, name, caption, problem) in enumerate(rows, start=1):
        if problem:
            rejects.append(Reject("annotation", number, name, "malformed_line",
                                  f"line {lineno}: {problem}"))
            continue
        if name not in problems:
            problems[name] = checks.file_name_problem(name)
            if problems[name]:
                rejects.append(Reject("image", name, name, *problems[name]))
        if problems[name]:
            rejects.append(Reject("annotation", number, name, "orphaned_by_image",
                                  f"line {lineno}: image {name!r} was rejected"))
        else:
            annotations.append(Annotation(number, name, caption))
    images = {name: ImageInfo(name, name) for name, problem in problems.items() if not problem}
    return CaptionSet(images, annotations, rejects=rejects)


def split_by_image(cs: CaptionSet, val_fraction: float = 0.1, seed: int = 42
                   ) -> tuple[CaptionSet, CaptionSet]:
    """Seeded split by image, the same on every machine: images ranked by sha256("{seed}:{id}"),
    the first round(n * val_fraction) to val, at least one on each side when there are two."""
    if not 0 < val_fraction < 1:
        raise VicapError(f"val_fraction must be between 0 and 1 (got {val_fraction})")
    ranked = sorted(cs.images, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = min(max(round(len(ranked) * val_fraction), 1), len(ranked) - 1)
    val_ids = set(ranked[:n_val])  # with 0 or 1 image, n_val is -1 or 0: no val image
    return (cs.subset(i for i in cs.images if i not in val_ids),
            cs.subset(i for i in cs.images if i in val_ids))


def write_split(folder: Path, train: CaptionSet, val: CaptionSet, seed: int,
                val_fraction: float) -> None:
    """Write train.json and val.json (COCO) and split.json (seed and image ids)."""
    write_coco(train, folder / "train.json")
    write_coco(val, folder / "val.json")
    atomic_write_json(folder / "split.json", {"seed": seed, "val_fraction": val_fraction,
                                              "train": list(train.images), "val": list(val.images)})


def cli_split(args: argparse.Namespace) -> int:
    """`vicap split`: write train.json, val.json and split.json into args.out, as one set."""
    if not 0 < args.val_fraction < 1:
        raise VicapError(f"--val-fraction must be between 0 and 1 (got {args.val_fraction})")
    cs = load_captions(args.annotations)
    train, val = split_by_image(cs, args.val_fraction, args.seed)
    with output_folder(args.out, "split", ("train.json", "val.json", "split.json"),
                       inputs={"--annotations": args.annotations}) as out, staged(out) as tmp:
        write_split(tmp, train, val, args.seed, args.val_fraction)
    print(f"split {len(cs.images)} images (seed {args.seed}): {len(train.images)} train, "
          f"{len(val.images)} val -> {out}")
    return 0
