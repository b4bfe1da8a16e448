"""`vicap predict`: caption every image a caption file lists, in batches, as COCO results JSON."""

import time
from pathlib import Path

from vicap_utils.captioner import Captioner, Decoding, base_config, caption, text_positions
from vicap_utils.data import load_captions
from vicap_utils.images import load_rgb
from vicap_utils.ops import folders
from vicap_utils.ops.adapters import ModelRef, load_model, model_ref
from vicap_utils.ops.io import VicapError, atomic_write_json, input_file, output_file, path_problem
from vicap_utils.ops.progress import progress


def predict_images(cap: Captioner, paths: list[Path], dec: Decoding, batch_size: int) -> list[str]:
    """One caption per image file, `batch_size` images per `generate` call, with a progress bar."""
    captions: list[str] = []
    for start in progress(range(0, len(paths), batch_size), desc="captioning", unit="batch"):
        images = [load_rgb(p) for p in paths[start:start + batch_size]]
        captions += [alts[0][0] for alts in caption(cap, images=images, dec=dec)]
    return captions


def predict_file(ref: ModelRef, annotations: str | Path, images: str | Path, out: str | Path,
                 dec: Decoding | None = None, batch_size: int | None = None,
                 overwrite: bool = False) -> list[dict]:
    """Caption every image of a caption file with `ref` (decoding and batch size default to its
    `eval`) into COCO results at `out` (a file vicap did not write: only with `overwrite`)."""
    out = output_file(out, "predictions JSON")
    cs = load_captions(annotations)
    skipped = [r for r in cs.rejects if r.kind == "image"]
    if skipped:  # e.g. a file name leading out of the images folder
        raise VicapError(f"{annotations}: {len(skipped)} listed images cannot be captioned, e.g. "
                         f"image {skipped[0].id!r}: {skipped[0].detail}")
    folder = input_file(images, "images folder", folder=True)
    ids = sorted(cs.images, key=str)
    paths = [folder / cs.images[i].file_name for i in ids]
    bad = [(cs.images[i].file_name, (path_problem(p) or ("", "is a folder"))[1])
           for i, p in zip(ids, paths) if not p.is_file()]
    if bad:
        raise VicapError(f"{folder}: {len(bad)} listed images missing or not files, e.g. "
                         f"{bad[0][0]} ({bad[0][1]})")
    read = [("--annotations", annotations), ("--images", folder), ("--model", ref.adapter),
            *(("--images", p) for p in paths)]
    if ref.adapter is not None:  # the adapter's files: its weights, vicap.json, tokenizer
        read += [("--model", p) for p in sorted(ref.adapter.iterdir())]
    folders.refuse_aliases(read, {"--out": out})
    folders.refuse_foreign_files(out.parent, [out.name], overwrite=overwrite)
    dec = dec or Decoding.from_eval(ref.eval)
    cap = load_model(ref)
    start = time.time()
    captions = predict_images(cap, paths, dec, batch_size or ref.eval.batch_size)
    results = [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]
    with folders.replacing_files(out.parent, [out.name], overwrite=overwrite):
        atomic_write_json(out, results)
    print(f"{len(results)} captions ({ref.label}, beam {dec.num_beams}) in "
          f"{time.time() - start:.1f} s -> {out}")
    return results


def cli_predict(args) -> int:
    """`vicap predict --model DIR [--no-adapter] --annotations FILE --images DIR --out FILE
    [--overwrite]`."""
    ref = model_ref(args.model, no_adapter=args.no_adapter)
    given = {name: getattr(args, name) for name in ("num_beams", "max_new_tokens", "batch_size")}
    for name, value in given.items():
        if value is not None and value < 1:
            raise VicapError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    batch_size = given.pop("batch_size")
    room = text_positions(base_config(ref.model.base)) - 1 if given["max_new_tokens"] else 0
    if given["max_new_tokens"] and given["max_new_tokens"] > room:
        raise VicapError(f"--max-new-tokens {given['max_new_tokens']} is out of range for "
                         f"{ref.model.base} (must be at most {room}: the base has {room + 1} "
                         "text positions)")
    dec = Decoding.from_eval(ref.eval, **{name: value for name, value in given.items() if value})
    predict_file(ref, args.annotations, args.images, args.out, dec, batch_size,
                 overwrite=args.overwrite)
    return 0
