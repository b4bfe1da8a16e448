"""The audited data a run trains on: find the raw captions, audit them, split them, and cache it.

`prepare(cfg, folder)` is what `vicap train` and notebook 01 both call, so the files notebook 01
shows are the files training reads. Nothing the audit rejects (missing or unreadable images,
empty or duplicate captions, unknown ids…) reaches a training batch. The result is cached by a
fingerprint of the annotation files' bytes, the referenced images' names, sizes and
modification times, and the data settings: a second call with the same inputs reads it back.

The folder holds `audit.json`, `clean.json` and `rejects.csv` (the audit of the training
captions; `val-audit/` and `test-audit/` for separate validation and test files),
`train.json`, `val.json` (and `test.json`), `split.json`, and `prepared.json`, written last,
whose fingerprint marks a complete set.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vicap_utils.config import Config, DataConfig
from vicap_utils.data import CaptionSet, load_captions, split_by_image, write_coco
from vicap_utils.ops.io import VicapError, atomic_write_json, read_json

PREPARED_FILE = "prepared.json"
# What `prepare` writes in its folder (the audit adds audit.json, clean.json, rejects.csv).
SPLIT_FILES = ("train.json", "val.json", "test.json", "split.json", PREPARED_FILE,
               "sources.json")
SUB_AUDITS = ("val-audit", "test-audit")
VERSION = 1  # bump when the audit or the split changes what they keep
IMAGE_DIR_NAMES = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "train2017",
                   "val2017", "test2017")


@dataclass
class RawData:
    """The caption files and image folders a config points at, before any audit."""

    train: Path
    images: Path
    val: Path | None = None
    val_images: Path | None = None
    test: Path | None = None
    test_images: Path | None = None

    def files(self) -> dict[str, tuple[Path, Path]]:
        """{split name: (captions file, images folder)} of the files given."""
        out = {"train": (self.train, self.images)}
        if self.val is not None:
            out["val"] = (self.val, self.val_images or self.images)
        if self.test is not None:
            out["test"] = (self.test, self.test_images or self.images)
        return out


@dataclass
class PreparedData:
    """Audited, split caption sets with their image folders and where they were written."""

    folder: Path
    train: CaptionSet
    val: CaptionSet
    train_images: Path
    val_images: Path
    fingerprint: str
    rejects: dict[str, int] = field(default_factory=dict)  # reason → count, all audits
    reused: bool = False
    test: CaptionSet | None = None
    test_images: Path | None = None

    @property
    def train_file(self) -> Path:
        """The training captions (COCO-style JSON) training reads."""
        return self.folder / "train.json"

    @property
    def val_file(self) -> Path:
        """The validation captions, the references of validation and evaluation."""
        return self.folder / "val.json"


def raw_data(cfg: Config) -> RawData:
    """The configured caption files: `data.*_annotations`, the built-in synthetic set, or the
    data set attached under /kaggle/input (with its own validation and test files when it has
    them, and its images found in any attached data set)."""
    from vicap_utils.toy import data as toy

    d = cfg.data
    roots: tuple[Path, ...] = ()
    val = test = None
    if d.train_annotations:
        train = Path(d.train_annotations)
    elif (built := toy.builtin_data(d)) is not None:
        train, images = built
        return RawData(train, images)
    else:
        train, val, test, roots = _discover(cfg)
    val = Path(d.val_annotations) if d.val_annotations else val
    test = Path(d.test_annotations) if d.test_annotations else test
    raw = RawData(train, find_images_dir(train, d.images, roots))
    if val is not None:
        raw.val, raw.val_images = val, find_images_dir(val, d.images, roots)
    if test is not None:
        raw.test, raw.test_images = test, find_images_dir(test, d.images, roots)
    return raw


def find_images_dir(annotations: Path, hint: str = "", roots: tuple[Path, ...] = ()) -> Path:
    """The folder holding a caption file's images: `hint` (data.images); else the folder near
    the captions file that holds its first image; else, on Kaggle, the folder of any attached
    data set that holds its images (annotations and COCO images often come separately)."""
    if hint:
        path = Path(hint)
        if not path.is_dir():
            raise VicapError(f"{path}: images folder not found (data.images)")
        return path
    cs = load_captions(annotations)
    if not cs.images:
        raise VicapError(f"{annotations}: lists no images")
    sample = next(iter(cs.images.values())).file_name
    root = annotations.parent
    candidates = [root, root.parent] + [d / n for d in (root, root.parent) for n in IMAGE_DIR_NAMES]
    for folder in candidates:
        if (folder / sample).is_file():
            return folder
    if roots:
        from vicap_utils.ops.env import find_image_folder

        found = find_image_folder([info.file_name for info in cs.images.values()], roots)
        if found is not None:
            return found
    for hit in root.parent.rglob(Path(sample).name):
        return hit.parent
    raise VicapError(f"{annotations}: cannot find the images (looked for {sample} near it"
                     f"{' and in the attached data sets' if roots else ''}); attach the images "
                     "or set data.images=/path/to/images")


def _discover(cfg: Config) -> tuple[Path, Path | None, Path | None, tuple[Path, ...]]:
    """The profile's data set under /kaggle/input: (train, val, test captions files, folders to
    look for images in), or a one-line hint to attach it."""
    from vicap_utils.ops.env import discover_data, kaggle_input

    found = discover_data(cfg.profile)
    if not found.found:
        raise VicapError(f"profile {cfg.profile}: no data set found under {kaggle_input()}; "
                         "attach it to the notebook or set "
                         "data.train_annotations=/path/to/captions")
    roots = (*found.image_dirs, kaggle_input())
    if found.captions is not None:  # Flickr8k: one captions file; its split lists sit beside it
        return found.captions, None, None, roots
    return found.train, found.val, found.test, roots


def fingerprint(raw: RawData, d: DataConfig) -> str:
    """A hash of everything the prepared set depends on: each caption file's bytes, each listed
    image's name, size and modification time, and the split settings."""
    h = hashlib.sha256(json.dumps({
        "version": VERSION, "val_fraction": d.val_fraction, "split_seed": d.split_seed,
        "max_train_images": d.max_train_images, "max_val_images": d.max_val_images,
    }, sort_keys=True).encode())
    for name, (captions, images) in raw.files().items():
        h.update(f"\n{name}\n".encode())
        h.update(_file_digest(captions).encode())
        for info in load_captions(captions, images).images.values():
            h.update(f"{info.file_name}\0{_stat_key(images / info.file_name)}\n".encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes (one-line error when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise VicapError(f"{path}: cannot read ({exc.strerror})") from None
    return h.hexdigest()


def _stat_key(path: Path) -> str:
    """Size and modification time of a file, or "missing"."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def prepare(cfg: Config, folder: str | Path, workers: int | None = None,
            log=print) -> PreparedData:
    """Audit and split the configured data into `folder`, or read it back when the folder
    already holds the set for the same fingerprint. Refuses, before any work, a folder another
    vicap command is writing, a name in it vicap did not write, and an output that would
    replace one of its inputs."""
    from vicap_utils.audit import OUTPUTS
    from vicap_utils.ops.folders import output_folder, staged

    raw = raw_data(cfg)
    inputs = [(f"data.{name}_annotations", captions)
              for name, (captions, _) in raw.files().items()]
    inputs += [(f"{name} images", images) for name, (_, images) in raw.files().items()]
    with output_folder(folder, "data", (*OUTPUTS, *SPLIT_FILES, *SUB_AUDITS), inputs=inputs,
                       label="data folder") as folder:
        key = fingerprint(raw, cfg.data)
        record = folder / PREPARED_FILE
        saved = read_json(record, "prepared-data record") if record.is_file() else {}
        if saved.get("fingerprint") == key:
            data = _read_back(folder, raw, key, saved)
            log(f"data: audited set reused from {folder} (fingerprint {key}): {_counts(data)}")
            return data
        data = _audit_and_split(cfg.data, raw, folder, key, workers)
        with staged(folder) as tmp:
            write_coco(data.train, tmp / "train.json")
            write_coco(data.val, tmp / "val.json")
            if data.test is not None:
                write_coco(data.test, tmp / "test.json")
            atomic_write_json(tmp / "split.json", {
                "seed": cfg.data.split_seed, "val_fraction": cfg.data.val_fraction,
                "train": list(data.train.images), "val": list(data.val.images)})
            atomic_write_json(tmp / PREPARED_FILE, {
                "fingerprint": key,
                "sources": {k: [str(c), str(i)] for k, (c, i) in raw.files().items()},
                "rejects": data.rejects, "train_images": len(data.train.images),
                "val_images": len(data.val.images)})
    log(f"data: {_counts(data)} -> {folder}")
    return data


def _audit_and_split(d: DataConfig, raw: RawData, folder: Path, key: str,
                     workers: int | None) -> PreparedData:
    """Audit each caption file (the training one into `folder`, the others into
    `val-audit/`, `test-audit/`), then split unless a validation file was given."""
    from vicap_utils.audit import audit
    from vicap_utils.ops.folders import record

    clean: dict[str, CaptionSet] = {}
    rejects: dict[str, int] = {}
    for name, (captions, images) in raw.files().items():
        out = folder if name == "train" else folder / f"{name}-audit"
        if out != folder:
            record(folder, [out.name])
        summary = audit(captions, images, out, workers=workers)
        for reason, count in summary["rejects"].items():
            rejects[reason] = rejects.get(reason, 0) + count
        clean[name] = load_captions(out / "clean.json")
    train, val = _split(clean["train"], clean.get("val"), d)
    data = PreparedData(folder, _limit(train, d.max_train_images), _limit(val, d.max_val_images),
                        raw.images, raw.val_images or raw.images, key, rejects,
                        test=clean.get("test"), test_images=raw.test_images or raw.images)
    if not data.train.images or not data.val.images:
        raise VicapError(f"{raw.train}: the audit left {len(data.train.images)} training and "
                         f"{len(data.val.images)} validation images; see {folder}/rejects.csv")
    return data


def _split(train: CaptionSet, val: CaptionSet | None, d: DataConfig
           ) -> tuple[CaptionSet, CaptionSet]:
    """A separate validation set as given; else the file's own split field (Flickr8k's lists);
    else a seeded split by image."""
    if val is not None:
        return train, val
    named = {s for s in train.split.values()}
    if named & {"dev", "val"}:
        return (train.subset(i for i, s in train.split.items() if s == "train"),
                train.subset(i for i, s in train.split.items() if s in ("dev", "val")))
    return split_by_image(train, d.val_fraction, d.split_seed)


def _limit(cs: CaptionSet, n: int) -> CaptionSet:
    """The first `n` images (by id) and their captions; all of them when n is 0."""
    return cs.subset(sorted(cs.images, key=str)[:n]) if n and n < len(cs.images) else cs


def _read_back(folder: Path, raw: RawData, key: str, record: dict) -> PreparedData:
    """The prepared set as written by an earlier `prepare` with the same fingerprint."""
    test = folder / "test.json"
    return PreparedData(
        folder, load_captions(folder / "train.json"), load_captions(folder / "val.json"),
        raw.images, raw.val_images or raw.images, key, record.get("rejects", {}), reused=True,
        test=load_captions(test) if test.is_file() else None,
        test_images=raw.test_images or raw.images)


def _counts(data: PreparedData) -> str:
    """One line: split sizes and what the audit rejected."""
    rejected = ", ".join(f"{r} {n}" for r, n in data.rejects.items() if n) or "nothing"
    return (f"{len(data.train.images)} train / {len(data.val.images)} val images, "
            f"{len(data.train.annotations)} training captions; audit rejected {rejected}")
