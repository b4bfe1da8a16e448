"""Caption sets: COCO-style and Flickr8k readers into one table, COCO writing, seeded split."""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vicap_utils.io import VicapError, atomic_write_json, make_output_dir, read_json

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
_FORMATS_HINT = "expected COCO-style JSON, Flickr8k.token.txt, or captions.txt with 'image,caption'"


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


@dataclass
class CaptionSet:
    """The common table every reader produces: images by id, captions, optional split.

    `extra` keeps top-level COCO keys other than images/annotations (info, licenses, ...).
    """

    images: dict[ImageId, ImageInfo]
    annotations: list[Annotation]
    split: dict[ImageId, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

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
    path = Path(path)
    if not path.is_file():
        raise VicapError(f"{path}: captions file not found")
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
    images: dict[ImageId, ImageInfo] = {}
    split: dict[ImageId, str] = {}
    for index, entry in enumerate(data["images"]):
        _require_keys(path, f"images[{index}]", entry, _IMAGE_KEYS)
        info = _coco_image(entry)
        if info.id in images:
            raise VicapError(f"{path}: images[{index}] repeats image id {info.id!r}")
        images[info.id] = info
        if isinstance(entry.get("split"), str):
            split[info.id] = entry["split"]
    annotations = []
    for index, entry in enumerate(data["annotations"]):
        _require_keys(path, f"annotations[{index}]", entry, _ANNOTATION_KEYS)
        annotations.append(_coco_annotation(entry))
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    return CaptionSet(images, annotations, split, extra)


def read_flickr_token(
    path: str | Path, text: str | None = None, split_dirs: Iterable[Path] = ()
) -> CaptionSet:
    """Flickr8k.token.txt (`name.jpg#i<TAB>caption`), with the official split lists when the
    folders in `split_dirs` hold them."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    pairs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab or not key.strip():
            raise VicapError(f"{path}: line {lineno}: expected 'name.jpg#N<TAB>caption'")
        pairs.append((key.rpartition("#")[0] or key, caption))
    cs = _from_pairs(pairs)
    cs.split = _flickr_split(cs, split_dirs)
    return cs


def read_flickr_csv(path: str | Path, text: str | None = None) -> CaptionSet:
    """Flickr8k captions.txt: CSV with header `image,caption`; an unquoted comma inside a
    caption stays part of the caption."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    rows = csv.reader(io.StringIO(text))
    header = next(rows, [])
    if [cell.strip().lower() for cell in header] != ["image", "caption"]:
        raise VicapError(f"{path}: expected the CSV header 'image,caption'")
    pairs = []
    for lineno, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip():
            raise VicapError(f"{path}: line {lineno}: expected 'image,caption'")
        pairs.append((row[0], ",".join(row[1:])))
    return _from_pairs(pairs)


def write_coco(cs: CaptionSet, path: str | Path) -> Path:
    """Write the set as COCO-style JSON, atomically."""
    return atomic_write_json(path, cs.to_coco())


def _read_text(path: Path) -> str:
    """The whole file as text (a UTF-8 BOM dropped), or a one-line error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise VicapError(f"{path}: not UTF-8 text") from None


def _first_line(text: str) -> str:
    """The first non-blank line, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


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
    is neither an integer nor text."""
    if not isinstance(entry, dict):
        raise VicapError(f"{path}: {where} is not an object")
    for key in keys:
        if key not in entry:
            raise VicapError(f"{path}: {where} has no '{key}'")
        value = entry[key]
        if key.endswith("id") and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise VicapError(f"{path}: {where} '{key}' must be an integer or text")


def _coco_image(entry: dict[str, Any]) -> ImageInfo:
    """An ImageInfo from a COCO image dict (size taken only when both are integers)."""
    width, height = entry.get("width"), entry.get("height")
    has_size = isinstance(width, int) and isinstance(height, int)
    return ImageInfo(
        id=entry["id"],
        file_name=str(entry["file_name"]),
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
        caption="" if caption is None else str(caption),
        extra={k: v for k, v in entry.items() if k not in _KNOWN_ANNOTATION_FIELDS},
    )


def _from_pairs(pairs: Iterable[tuple[str, str]]) -> CaptionSet:
    """A set from (file name, caption) pairs: image id = file stem, annotation ids 1, 2, ..."""
    images: dict[ImageId, ImageInfo] = {}
    annotations = []
    for number, (file_name, caption) in enumerate(pairs, start=1):
        file_name = file_name.strip()
        image_id = Path(file_name).stem
        images.setdefault(image_id, ImageInfo(image_id, file_name))
        annotations.append(Annotation(number, image_id, caption))
    return CaptionSet(images, annotations)


def _flickr_split(cs: CaptionSet, split_dirs: Iterable[Path]) -> dict[ImageId, str]:
    """Image id -> train/val/test from the Flickr_8k.*Images.txt lists that exist."""
    split: dict[ImageId, str] = {}
    for folder in split_dirs:
        for file_name, name in FLICKR_SPLIT_FILES.items():
            list_path = folder / file_name
            if list_path.is_file():
                for line in _read_text(list_path).split():
                    if Path(line).stem in cs.images:
                        split[Path(line).stem] = name
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
    """`vicap split`: write train.json, val.json and split.json into args.out."""
    cs = load_captions(args.annotations)
    train, val = split_by_image(cs, args.val_fraction, args.seed)
    out = make_output_dir(args.out)
    write_coco(train, out / "train.json")
    write_coco(val, out / "val.json")
    record = {
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "train": list(train.images),
        "val": list(val.images),
    }
    atomic_write_json(out / "split.json", record)
    print(
        f"split {len(cs.images)} images (seed {args.seed}): {len(train.images)} train, "
        f"{len(val.images)} val -> {out}"
    )
    return 0

