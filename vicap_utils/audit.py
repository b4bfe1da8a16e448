"""`vicap audit`: decode every image, screen every caption; write, as one set, audit.json,
clean.json and rejects.csv (every caption is in clean.json or rejects.csv)."""

import argparse
import csv
from collections import Counter
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import Any

from PIL import ImageFile

from vicap_utils.data import Annotation, CaptionSet, ImageId, Reject, load_captions, write_coco
from vicap_utils.images import ImageCheck, check_image
from vicap_utils.ops.folders import output_folder, staged
from vicap_utils.ops.io import atomic_write_json, input_file
from vicap_utils.ops.pool import process_map, worker_count
from vicap_utils.ops.progress import progress
from vicap_utils.text import normalize_caption, syllable_count

REASONS = {
    "missing_file": "the image file does not exist (or its file_name is empty)",
    "unreadable_image": "the image does not decode fully (truncated, a folder, no permission)",
    "image_without_captions": "no caption of a decodable image was kept",
    "empty_caption": "the caption has no words (null, blank, punctuation only)",
    "unknown_image_id": "the caption's image id is not in the images list",
    "duplicate_annotation_id": "the annotation id was already used",
    "duplicate_caption": "the same caption twice for one image (after normalisation, any case)",
    "orphaned_by_image": "the caption's image was rejected",
    "caption_not_text": "the caption is not text (number, list, object, boolean, NaN, bad Unicode)",
    "file_outside_images": "the file name is absolute or leads out of the images folder with ..",
    "malformed_line": "a Flickr8k line that does not parse (no tab, a CSV quoting error)",
}
OUTPUTS = ("audit.json", "clean.json", "rejects.csv")


def audit(annotations_path: str | Path, images_dir: str | Path, out_dir: str | Path,
          workers: int | None = None) -> dict[str, Any]:
    """Audit a caption set into `out_dir`; return the audit.json content. Defects are reported;
    bad input or an unusable output folder raise VicapError before any image is decoded."""
    workers = worker_count(workers)
    images_dir = input_file(images_dir, "images folder", folder=True)
    cs = load_captions(annotations_path, images_dir)
    inputs = {"--annotations": annotations_path, "--images": images_dir}
    with output_folder(out_dir, "audit", OUTPUTS, inputs=inputs) as out:
        paths = [images_dir / info.file_name for info in cs.images.values()]
        decoded = ([check_image(p) for p in progress(paths, unit="img", desc="decoding images")]
                   if workers == 1 or len(paths) < 2 else
                   process_map(_decode, paths, workers, desc="decoding images", unit="img"))
        clean, rejects, summary = screen(cs, dict(zip(cs.images, decoded, strict=True)))
        with staged(out) as tmp:  # the three replace the previous ones as a set
            with open(tmp / "rejects.csv", "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows(
                    [[f.name for f in fields(Reject)], *(astuple(reject) for reject in rejects)])
            write_coco(clean, tmp / "clean.json")
            atomic_write_json(tmp / "audit.json", summary)
    lines = [f"{'images':<26}{summary['images_ok']:>8} ok of {summary['images_total']}",
             f"{'captions':<26}{summary['annotations_ok']:>8} ok of {summary['annotations_total']}",
             f"{'captions normalised':<26}{summary['normalized_captions']:>8}"]
    lines += [f"{reason:<26}{count:>8}" for reason, count in summary["rejects"].items() if count]
    print("\n".join([*lines, f"wrote audit.json, clean.json, rejects.csv to {out_dir}"]))
    return summary


def _decode(path: Path) -> ImageCheck:
    """check_image in a worker, looked up when called (tests slow it down); truncated images
    fail whatever the parent set."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return check_image(path)


def screen(cs: CaptionSet, checks: dict[ImageId, ImageCheck]
           ) -> tuple[CaptionSet, list[Reject], dict[str, Any]]:
    """Apply every rule (images that fail to decode, bad captions, images left captionless):
    the clean set, the rejects (the reader's first) and the audit.json content."""
    image_rejects = [Reject("image", i, cs.images[i].file_name, check.reason or "", check.detail)
                     for i, check in checks.items() if not check.ok]
    kept, caption_rejects, normalized = _screen_captions(cs, {r.id for r in image_rejects})
    decoded = {i: replace(info, width=checks[i].width, height=checks[i].height)
               for i, info in cs.images.items() if checks[i].ok}
    with_captions = {ann.image_id for ann in kept}
    captionless = [Reject("image", i, info.file_name, "image_without_captions", "no valid caption")
                   for i, info in decoded.items() if i not in with_captions]
    clean = CaptionSet(decoded, kept, cs.split, cs.extra)
    clean = clean.subset(image_id for image_id in decoded if image_id in with_captions)
    rejects = cs.rejects + image_rejects + captionless + caption_rejects
    read_rejects = Counter(reject.kind for reject in cs.rejects)
    counts = Counter(reject.reason for reject in rejects)
    return clean, rejects, {
        "images_total": len(cs.images) + read_rejects["image"],
        "images_ok": len(clean.images),
        "annotations_total": len(cs.annotations) + read_rejects["annotation"],
        "annotations_ok": len(clean.annotations),
        "normalized_captions": normalized,
        "rejects": {reason: counts.get(reason, 0) for reason in REASONS},  # every code, 0 or more
    }


def _screen_captions(cs: CaptionSet, bad_images: set[ImageId]
                     ) -> tuple[list[Annotation], list[Reject], int]:
    """Kept (normalised) captions, rejected ones, and how many kept ones normalisation changed."""
    kept: list[Annotation] = []
    rejects: list[Reject] = []
    kept_ids: set[Any] = set()
    kept_captions: dict[tuple[ImageId, str], Any] = {}  # (image, casefolded caption) -> id
    normalized = 0
    for ann in cs.annotations:
        caption = normalize_caption(ann.caption)
        key = (ann.image_id, caption.casefold())
        if ann.id in kept_ids:
            reason = "duplicate_annotation_id", f"annotation id {ann.id!r} is already used"
        elif ann.image_id not in cs.images:
            reason = "unknown_image_id", f"image id {ann.image_id!r} is not in images"
        elif syllable_count(caption) == 0:
            reason = "empty_caption", f"caption {ann.caption!r} has no words"
        elif ann.image_id in bad_images:
            reason = "orphaned_by_image", f"image {ann.image_id!r} was rejected"
        elif key in kept_captions:
            reason = "duplicate_caption", f"same caption as annotation {kept_captions[key]!r}"
        else:
            kept_ids.add(ann.id)
            kept_captions[key] = ann.id
            kept.append(replace(ann, caption=caption))
            normalized += caption != ann.caption
            continue
        image = cs.images.get(ann.image_id)
        rejects.append(Reject("annotation", ann.id, image.file_name if image else "", *reason))
    return kept, rejects, normalized


def cli_audit(args: argparse.Namespace) -> int:
    """`vicap audit`: exit 0 even when defects are found (they are in the report)."""
    audit(args.annotations, args.images, args.out, workers=args.workers)
    return 0
