"""Where a run's data comes from: the cached synthetic set, config paths, or /kaggle/input.

Resolves a config's data section to train/val caption sets and their image folders, and
writes the exact split into the run folder (`data/train.json`, `data/val.json`), so that
`predict` and `evaluate` later use the same validation images as references.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vicap_utils.config import Config
from vicap_utils.data import CaptionSet, load_captions, split_by_image, write_coco
from vicap_utils.io import VicapError, atomic_write_json

IMAGE_DIR_NAMES = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "train2017",
                   "val2017", "test2017")


@dataclass
class DataSplit:
    """Train and validation caption sets with their image folders and written files."""

    train: CaptionSet
    val: CaptionSet
    train_images: Path
    val_images: Path
    train_file: Path | None = None
    val_file: Path | None = None


def guess_images_dir(annotations: Path, cs: CaptionSet, hint: str = "") -> Path:
    """The folder holding the set's images: the hint, or a likely folder near the captions."""
    if hint:
        path = Path(hint)
        if not path.is_dir():
            raise VicapError(f"{path}: images folder not found (data.images)")
        return path
    sample = next(iter(cs.images.values())).file_name
    root = annotations.parent
    candidates = [root, root.parent] + [d / n for d in (root, root.parent) for n in IMAGE_DIR_NAMES]
    for folder in candidates:
        if (folder / sample).is_file():
            return folder
    for hit in root.parent.rglob(Path(sample).name):
        return hit.parent
    raise VicapError(f"{annotations}: cannot find the images (looked for {sample} near it); "
                     "set data.images=/path/to/images")


def _discover(cfg: Config) -> Path:
    from vicap_utils.env import DATA_GLOBS, find_inputs

    hits = find_inputs(DATA_GLOBS.get(cfg.profile, []))
    if not hits:
        raise VicapError(f"profile {cfg.profile}: no data set found under /kaggle/input; attach "
                         "it to the notebook or set data.train_annotations=/path/to/captions")
    return hits[0]


def _keep_existing(cs: CaptionSet, images: Path) -> CaptionSet:
    """Drop images whose files are missing (run `vicap audit` for the full check)."""
    present = [i for i, info in cs.images.items() if (images / info.file_name).is_file()]
    if len(present) < len(cs.images):
        print(f"warning: {len(cs.images) - len(present)} images missing under {images}; "
              "skipped (run `vicap audit` to see which)")
    if not present:
        raise VicapError(f"{images}: none of the captioned images is there")
    return cs.subset(present)


def _limit(cs: CaptionSet, n: int) -> CaptionSet:
    return cs.subset(sorted(cs.images, key=str)[:n]) if n and n < len(cs.images) else cs


def training_source(cfg: Config) -> tuple[Path, Path, CaptionSet]:
    """(captions file, images folder, caption set) of the configured training data: the
    cached synthetic set for `mini`, the configured paths, or what /kaggle/input holds."""
    d = cfg.data
    if d.source == "synthetic" and not d.train_annotations:
        from vicap_utils.mini import synthetic_set

        folder = synthetic_set(d.lang, d.synthetic_images, d.synthetic_seed)
        train_file = folder / "captions.json"
        return train_file, folder / "images", load_captions(train_file)
    train_file = Path(d.train_annotations) if d.train_annotations else _discover(cfg)
    full = load_captions(train_file)
    return train_file, guess_images_dir(train_file, full, d.images), full


def resolve_data(cfg: Config, run_dir: Path | None = None) -> DataSplit:
    """Load (or synthesise) the configured data, split it, and record the split in run_dir."""
    d = cfg.data
    train_file, images, full = training_source(cfg)
    full = _keep_existing(full, images)
    if d.val_annotations:
        val_file = Path(d.val_annotations)
        val = load_captions(val_file)
        val_images = guess_images_dir(val_file, val, d.images)
        val, train = _keep_existing(val, val_images), full
    elif full.split and any(s in ("dev", "val") for s in full.split.values()):
        train = full.subset([i for i, s in full.split.items() if s == "train" and i in full.images])
        val = full.subset([i for i, s in full.split.items() if s in ("dev", "val")
                           and i in full.images])
        val_images = images
    else:
        train, val = split_by_image(full, d.val_fraction, d.split_seed)
        val_images = images
    split = DataSplit(_limit(train, d.max_train_images), _limit(val, d.max_val_images),
                      images, val_images)
    if run_dir is not None:
        data_dir = Path(run_dir) / "data"
        split.train_file, split.val_file = data_dir / "train.json", data_dir / "val.json"
        write_coco(split.train, split.train_file)
        write_coco(split.val, split.val_file)
        atomic_write_json(data_dir / "sources.json", {
            "train_annotations": str(train_file), "train_images": str(images),
            "val_images": str(val_images), "n_train_images": len(split.train.images),
            "n_val_images": len(split.val.images)})
    return split
