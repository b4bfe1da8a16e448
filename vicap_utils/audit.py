"""`vicap audit`: decode every image, screen every caption, write the clean set and a report.

Outputs (in `--out`, as one set: all three new, or the previous three untouched): audit.json
(counts, every reason code present), clean.json (the kept images and normalised captions, COCO
style), rejects.csv (kind, id, file, reason, detail: one row per rejected image or caption).
Every input caption is either in clean.json or in rejects.csv. Reason codes (`REASONS`):

- `missing_file`: the image file does not exist (or its `file_name` is empty)
- `unreadable_image`: it exists but does not decode fully (truncated, not an image, a folder,
  a symlink loop, no permission)
- `image_without_captions`: a decodable image none of whose captions was kept
- `empty_caption`: a caption with no words (null, blank, punctuation only)
- `unknown_image_id`: a caption of an image id the file does not list
- `duplicate_annotation_id`: a caption whose annotation id was already used
- `duplicate_caption`: the same caption twice for one image (after normalisation, any case)
- `orphaned_by_image`: a caption of a rejected image
- `caption_not_text`: a number, list, object, boolean, NaN or invalid Unicode as a caption
- `file_outside_images`: an absolute `file_name`, or one that leads out with `..`
- `malformed_line`: a Flickr8k line that does not parse (no tab, a CSV quoting error such as an
  unterminated quote), with its line number
"""
from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import os
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from PIL import ImageFile

from vicap_utils.data import (
    Annotation,
    CaptionSet,
    ImageId,
    ImageInfo,
    Reject,
    load_captions,
    write_coco,
)
from vicap_utils.images import ImageCheck, check_image
from vicap_utils.ops.folders import output_folder, pid_alive, refuse_aliases, staged
from vicap_utils.ops.io import VicapError, atomic_write_json, atomic_write_text, input_dir
from vicap_utils.ops.progress import progress
from vicap_utils.text import normalize_caption, syllable_count

REASONS = {
    "missing_file": "the image file does not exist",
    "unreadable_image": "the image file does not decode fully",
    "image_without_captions": "no caption of a decodable image was kept",
    "empty_caption": "the caption has no words",
    "unknown_image_id": "the caption's image id is not in the images list",
    "duplicate_annotation_id": "the annotation id was already used",
    "duplicate_caption": "the same caption twice for one image",
    "orphaned_by_image": "the caption's image was rejected",
    "caption_not_text": "the caption is not text (number, list, object, boolean, NaN, bad Unicode)",
    "file_outside_images": "the file name is absolute or leads out of the images folder",
    "malformed_line": "a Flickr8k line that does not parse (its line number is in the detail)",
}
OUTPUTS = ("audit.json", "clean.json", "rejects.csv")
REJECT_COLUMNS = ("kind", "id", "file", "reason", "detail")
_MAX_CHUNK = 64


@dataclass
class AuditResult:
    """What the audit found: the clean set, the rejects and the counts for audit.json."""

    clean: CaptionSet
    rejects: list[Reject]
    images_total: int
    annotations_total: int
    normalized_captions: int

    def summary(self) -> dict[str, Any]:
        """The audit.json content; every reason code is present, 0 when none."""
        counts = Counter(reject.reason for reject in self.rejects)
        return {
            "images_total": self.images_total,
            "images_ok": len(self.clean.images),
            "annotations_total": self.annotations_total,
            "annotations_ok": len(self.clean.annotations),
            "normalized_captions": self.normalized_captions,
            "rejects": {reason: counts.get(reason, 0) for reason in REASONS},
        }


@dataclass
class _CaptionScreen:
    """Checks captions one by one, remembering the ids and captions already kept."""

    images: dict[ImageId, ImageInfo]
    rejected_images: set[ImageId]
    kept_ids: set[Any] = field(default_factory=set)
    kept_captions: dict[tuple[ImageId, str], Any] = field(default_factory=dict)

    def reason(self, ann: Annotation, caption: str) -> tuple[str, str] | None:
        """(code, detail) for a caption to reject, None for one to keep (and remember)."""
        key = (ann.image_id, caption.casefold())
        if ann.id in self.kept_ids:
            return "duplicate_annotation_id", f"annotation id {ann.id!r} is already used"
        if ann.image_id not in self.images:
            return "unknown_image_id", f"image id {ann.image_id!r} is not in images"
        if syllable_count(caption) == 0:
            return "empty_caption", f"caption {ann.caption!r} has no words"
        if ann.image_id in self.rejected_images:
            return "orphaned_by_image", f"image {ann.image_id!r} was rejected"
        if key in self.kept_captions:
            return "duplicate_caption", f"same caption as annotation {self.kept_captions[key]!r}"
        self.kept_ids.add(ann.id)
        self.kept_captions[key] = ann.id
        return None


def audit(
    annotations_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    workers: int | None = None,
) -> dict[str, Any]:
    """Audit a caption set; write audit.json, clean.json and rejects.csv in `out_dir`.

    Returns the audit.json content. Defects are reported, not raised; bad input, an output
    that would write over an input, or an output folder that is busy, not writable or holds
    files vicap did not write raise VicapError before any image is decoded.
    """
    workers = worker_count(workers)
    images_dir = input_dir(images_dir, "images folder")
    out_dir = Path(out_dir)
    inputs = {"--annotations": annotations_path, "--images": images_dir}
    refuse_aliases(inputs, [("--out", out_dir / name) for name in OUTPUTS])
    cs = load_captions(annotations_path, images_dir)
    with output_folder(out_dir, "audit", OUTPUTS, inputs=inputs) as out:
        paths = [images_dir / info.file_name for info in cs.images.values()]
        checks = dict(zip(cs.images, check_images(paths, workers), strict=True))
        result = screen(cs, checks)
        summary = result.summary()
        with staged(out) as tmp:
            write_report(result, summary, tmp)
    print(format_summary(summary, out_dir))
    return summary


def worker_count(workers: int | None) -> int:
    """The number of decoding processes: all cores by default; refused outside 1..limit."""
    limit = max(64, 4 * (os.cpu_count() or 1))
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= limit:
        raise VicapError(f"--workers must be between 1 and {limit} (got {workers})")
    return workers


def check_images(paths: Sequence[Path], workers: int | None = None) -> list[ImageCheck]:
    """Fully decode every image, in a process pool of `workers` (default: all cores)."""
    workers = worker_count(workers)
    if workers == 1 or len(paths) < 2:
        return [check_image(path) for path in progress(paths, unit="img", desc="decoding images")]
    return _check_in_pool(paths, workers)


def _check_in_pool(paths: Sequence[Path], workers: int) -> list[ImageCheck]:
    """Decode chunks of images in worker processes, keeping the input order.

    Workers are forked before the progress bar starts its monitor thread. On Ctrl-C (or any
    error) the queued chunks are cancelled and the workers ended at once.
    """
    size = _chunk_size(len(paths), workers)
    chunks = [[str(p) for p in paths[i : i + size]] for i in range(0, len(paths), size)]
    results: list[list[ImageCheck]] = [[] for _ in chunks]
    pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=_pool_context(),
                               initializer=_worker_start, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_check_chunk, chunk): index for index, chunk in enumerate(chunks)}
        with progress(total=len(paths), unit="img", desc="decoding images") as bar:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(len(results[futures[future]]))
    except BrokenProcessPool:
        _stop(pool)
        raise VicapError("an image-decoding process died (out of memory?); run again with "
                         "--workers 1 to see which image") from None
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return [check for chunk in results for check in chunk]


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued decodes and end the workers now, without waiting for them (the
    executor forgets its processes on shutdown, so they are taken first)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _pool_context() -> BaseContext:
    """`fork` (quick to start) in a single-threaded process, else `forkserver` or `spawn`:
    forking a process that runs other threads (a notebook kernel, torch) can deadlock."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _single_threaded():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _single_threaded() -> bool:
    """True when the OS lists exactly one thread in this process; False when it cannot tell."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _chunk_size(n_paths: int, workers: int) -> int:
    """About eight chunks per worker (smooth progress, little IPC), at most 64 images each."""
    return max(1, min(_MAX_CHUNK, n_paths // (workers * 8)))


def _worker_start(parent: int) -> None:
    """Worker start-up: truncated images must fail to load, whatever the parent set; Ctrl-C
    is the parent's to handle (it ends the workers), so workers print no traceback; the
    worker dies with its parent (even a kill -9 of it), so no orphan keeps the folder locked."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this worker as soon as the process `parent` ends (a Linux pidfd wakes at once;
    elsewhere polled each second). A worker's parent may be the forkserver, which lives as
    long as its workers do, so the signal prctl(PR_SET_PDEATHSIG) sends would never come."""
    try:
        select.select([os.pidfd_open(parent)], [], [])
    except (AttributeError, OSError):  # no pidfd here, or the parent is already gone
        while pid_alive(parent):
            time.sleep(1)
    os._exit(1)


def _check_chunk(paths: list[str]) -> list[ImageCheck]:
    """Check one chunk of images (runs in a worker process)."""
    return [check_image(path) for path in paths]


def screen(cs: CaptionSet, checks: dict[ImageId, ImageCheck]) -> AuditResult:
    """Apply every rule: images that fail to decode, bad captions, images left captionless;
    the reader's rejects come first."""
    image_rejects = [
        Reject("image", image_id, cs.images[image_id].file_name, check.reason or "", check.detail)
        for image_id, check in checks.items()
        if not check.ok
    ]
    screen_ = _CaptionScreen(cs.images, {reject.id for reject in image_rejects})
    kept, caption_rejects, normalized = _screen_captions(cs, screen_)
    decoded = {
        image_id: replace(info, width=checks[image_id].width, height=checks[image_id].height)
        for image_id, info in cs.images.items()
        if checks[image_id].ok
    }
    captionless = _captionless(decoded, kept)
    lost = {reject.id for reject in captionless}
    clean = CaptionSet(decoded, kept, cs.split, cs.extra)
    clean = clean.subset(image_id for image_id in decoded if image_id not in lost)
    rejects = cs.rejects + image_rejects + captionless + caption_rejects
    read_rejects = Counter(reject.kind for reject in cs.rejects)
    return AuditResult(clean, rejects, len(cs.images) + read_rejects["image"],
                       len(cs.annotations) + read_rejects["annotation"], normalized)


def _screen_captions(
    cs: CaptionSet, screen_: _CaptionScreen
) -> tuple[list[Annotation], list[Reject], int]:
    """Kept (normalised) captions, rejected ones, and how many kept ones normalisation changed."""
    kept: list[Annotation] = []
    rejects: list[Reject] = []
    normalized = 0
    for ann in cs.annotations:
        caption = normalize_caption(ann.caption)
        reason = screen_.reason(ann, caption)
        if reason is None:
            kept.append(replace(ann, caption=caption))
            normalized += caption != ann.caption
        else:
            image = cs.images.get(ann.image_id)
            rejects.append(Reject("annotation", ann.id, image.file_name if image else "", *reason))
    return kept, rejects, normalized


def _captionless(images: dict[ImageId, ImageInfo], kept: list[Annotation]) -> list[Reject]:
    """Decodable images that have no caption left."""
    with_captions = {ann.image_id for ann in kept}
    return [
        Reject("image", image_id, info.file_name, "image_without_captions", "no valid caption")
        for image_id, info in images.items()
        if image_id not in with_captions
    ]


def write_report(result: AuditResult, summary: dict[str, Any], out_dir: Path) -> None:
    """Write rejects.csv, clean.json and audit.json into `out_dir` (a staging folder in
    `audit`, so that the three replace the previous ones as a set)."""
    atomic_write_text(out_dir / "rejects.csv", rejects_csv(result.rejects))
    write_coco(result.clean, out_dir / "clean.json")
    atomic_write_json(out_dir / "audit.json", summary)


def rejects_csv(rejects: Sequence[Reject]) -> str:
    """rejects.csv text: kind, id, file, reason, detail."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REJECT_COLUMNS)
    writer.writerows((r.kind, r.id, r.file, r.reason, r.detail) for r in rejects)
    return buffer.getvalue()


def format_summary(summary: dict[str, Any], out_dir: Path) -> str:
    """A short table for the terminal."""
    lines = [
        f"{'images':<26}{summary['images_ok']:>8} ok of {summary['images_total']}",
        f"{'captions':<26}{summary['annotations_ok']:>8} ok of {summary['annotations_total']}",
        f"{'captions normalised':<26}{summary['normalized_captions']:>8}",
    ]
    lines += [f"{reason:<26}{count:>8}" for reason, count in summary["rejects"].items() if count]
    lines.append(f"wrote audit.json, clean.json, rejects.csv to {out_dir}")
    return "\n".join(lines)


def cli_audit(args: argparse.Namespace) -> int:
    """`vicap audit`: exit 0 even when defects are found (they are in the report)."""
    audit(args.annotations, args.images, args.out, workers=args.workers)
    return 0
