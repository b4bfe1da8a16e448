"""The audited, split data a run trains on (`vicap train`, notebook 01), cached: prepared.json,
written last, holds the fingerprint that lets the same inputs be read back."""

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vicap_utils.audit import OUTPUTS, audit
from vicap_utils.config import Config, DataConfig
from vicap_utils.data import CaptionSet, load_captions, split_by_image, write_coco, write_split
from vicap_utils.ops.env import IMAGE_DIR_GLOBS, discover_data, find_image_folder, kaggle_input
from vicap_utils.ops.folders import output_folder, record, staged
from vicap_utils.ops.io import VicapError, atomic_write_json, input_file, read_json
from vicap_utils.toy.data import builtin_data

PREPARED_FILE = "prepared.json"
SETS = ("train", "val", "test")
# What `prepare` writes in its folder (the audit adds audit.json, clean.json, rejects.csv).
SPLIT_FILES = ("train.json", "val.json", "test.json", "split.json", PREPARED_FILE,
               "sources.json")
SUB_AUDITS = ("val-audit", "test-audit")
VERSION = 1  # bump when the audit or the split changes what they keep
# Before any audit: {"train" (always), "val", "test": (captions file, images folder)}
RawData = dict[str, tuple[Path, Path]]


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


def raw_data(cfg: Config) -> RawData:
    """The configured caption files with their images: `data.*_annotations`, the built-in
    synthetic set, or the data set attached under /kaggle/input (its own val and test files)."""
    d = cfg.data
    roots: tuple[Path, ...] = ()
    val = test = None
    if d.train_annotations:
        train = Path(d.train_annotations)
    elif (built := builtin_data(d)) is not None:
        return {"train": built}
    else:
        found = discover_data(cfg.profile)
        if not found.found:
            raise VicapError(f"profile {cfg.profile}: no data set found under {kaggle_input()}; "
                             "attach it to the notebook or set "
                             "data.train_annotations=/path/to/captions")
        roots = (*found.image_dirs, kaggle_input())
        # Flickr8k: one captions file, its split lists beside it; UIT-ViIC: one file per split
        train, val, test = ((found.captions, None, None) if found.captions is not None
                            else (found.train, found.val, found.test))
    val = Path(d.val_annotations) if d.val_annotations else val
    test = Path(d.test_annotations) if d.test_annotations else test
    given = {"train": train, "val": val, "test": test}
    return {name: (path, find_images_dir(path, d.images, roots)) for name, path in given.items()
            if path is not None}


def find_images_dir(annotations: Path, hint: str = "", roots: tuple[Path, ...] = ()) -> Path:
    """The folder of a caption file's images: `hint` (data.images), else the one near the file
    holding its first image, else the one in `roots` (attached data sets) holding most of them."""
    if hint:
        return input_file(hint, "images folder (data.images)", folder=True)
    names = [info.file_name for info in load_captions(annotations).images.values()]
    if not names:
        raise VicapError(f"{annotations}: lists no images")
    near = [annotations.parent, annotations.parent.parent]
    near += [sub for folder in near[:2] for name in IMAGE_DIR_GLOBS for sub in folder.glob(name)]
    for folder in near:
        if (folder / names[0]).is_file():
            return folder
    if roots and (found := find_image_folder(names, roots)):
        return found
    for hit in near[1].rglob(Path(names[0]).name):
        return hit.parent
    raise VicapError(f"{annotations}: cannot find the images (looked for {names[0]} near it"
                     f"{' and in the attached data sets' if roots else ''}); attach the images "
                     "or set data.images=/path/to/images")


def fingerprint(raw: RawData, d: DataConfig) -> str:
    """A hash of everything the prepared set depends on: each caption file's bytes, each listed
    image's name, size and modification time, and the split settings."""
    h = hashlib.sha256(json.dumps({
        "version": VERSION, "val_fraction": d.val_fraction, "split_seed": d.split_seed,
        "max_train_images": d.max_train_images, "max_val_images": d.max_val_images,
    }, sort_keys=True).encode())
    for name, (captions, images) in raw.items():
        cs = load_captions(captions, images)  # first: a one-line error for an unreadable file
        h.update(f"\n{name}\n{hashlib.sha256(captions.read_bytes()).hexdigest()}".encode())
        for info in cs.images.values():
            try:
                st = os.stat(images / info.file_name)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{info.file_name}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


def prepare(cfg: Config, folder: str | Path, workers: int | None = None,
            log=print) -> PreparedData:
    """Audit and split the configured data into `folder`, or read it back when it holds the set
    of the same fingerprint. An unusable folder is refused before any work."""
    raw = raw_data(cfg)
    inputs = [(f"data.{name}_annotations", captions) for name, (captions, _) in raw.items()]
    inputs += [(f"{name} images", images) for name, (_, images) in raw.items()]
    with output_folder(folder, "data", (*OUTPUTS, *SPLIT_FILES, *SUB_AUDITS), inputs=inputs,
                       label="data folder") as folder:
        key = fingerprint(raw, cfg.data)
        saved = folder / PREPARED_FILE
        saved = read_json(saved, "prepared-data record") if saved.is_file() else {}
        reused = saved.get("fingerprint") == key
        if reused:
            sets = {name: load_captions(folder / f"{name}.json") for name in SETS
                    if name != "test" or (folder / "test.json").is_file()}
            rejects = saved.get("rejects", {})
        else:
            sets, rejects = _audit_and_split(cfg.data, raw, folder, workers)
        data = PreparedData(folder, sets["train"], sets["val"], raw["train"][1],
                            raw.get("val", raw["train"])[1], key, rejects, reused,
                            sets.get("test"), raw.get("test", raw["train"])[1])
        if not reused:
            with staged(folder) as tmp:
                write_split(tmp, data.train, data.val, cfg.data.split_seed, cfg.data.val_fraction)
                if data.test is not None:
                    write_coco(data.test, tmp / "test.json")
                atomic_write_json(tmp / PREPARED_FILE, {
                    "fingerprint": key,
                    "sources": {k: [str(c), str(i)] for k, (c, i) in raw.items()},
                    "rejects": rejects, "train_images": len(data.train.images),
                    "val_images": len(data.val.images)})
    rejected = ", ".join(f"{r} {n}" for r, n in data.rejects.items() if n) or "nothing"
    counts = (f"{len(data.train.images)} train / {len(data.val.images)} val images, "
              f"{len(data.train.annotations)} training captions; audit rejected {rejected}")
    log(f"data: audited set reused from {folder} (fingerprint {key}): {counts}" if reused
        else f"data: {counts} -> {folder}")
    return data


def _audit_and_split(d: DataConfig, raw: RawData, folder: Path, workers: int | None
                     ) -> tuple[dict[str, CaptionSet], dict[str, int]]:
    """Audit each caption file (train into `folder`, others into `<name>-audit/`), then split (a
    val file as given, else Flickr8k's lists, else seeded): the sets, and rejects per reason."""
    sets: dict[str, CaptionSet] = {}
    rejects: Counter[str] = Counter()
    for name, (captions, images) in raw.items():
        out = folder if name == "train" else folder / f"{name}-audit"
        if out != folder:
            record(folder, [out.name])
        rejects.update(audit(captions, images, out, workers=workers)["rejects"])
        sets[name] = load_captions(out / "clean.json")
    train, val = sets["train"], sets.get("val")  # a validation file: as given
    if val is None and set(train.split.values()) & {"dev", "val"}:  # Flickr8k's split lists
        train, val = (train.subset(i for i, s in train.split.items() if s == "train"),
                      train.subset(i for i, s in train.split.items() if s in ("dev", "val")))
    elif val is None:
        train, val = split_by_image(train, d.val_fraction, d.split_seed)
    sets["train"], sets["val"] = _limit(train, d.max_train_images), _limit(val, d.max_val_images)
    if not sets["train"].images or not sets["val"].images:
        raise VicapError(f"{raw['train'][0]}: the audit left {len(sets['train'].images)} "
                         f"training and {len(sets['val'].images)} validation images; see "
                         f"{folder}/rejects.csv")
    return sets, dict(rejects)


def _limit(cs: CaptionSet, n: int) -> CaptionSet:
    """The first `n` images (by id) and their captions; all of them when n is 0."""
    return cs.subset(sorted(cs.images, key=str)[:n]) if n and n < len(cs.images) else cs
