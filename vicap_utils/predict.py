"""`vicap predict`: caption every image a caption file lists, in batches, as COCO results JSON."""
from __future__ import annotations

import time
from pathlib import Path

from vicap_utils.captioner import Captioner, Decoding, caption
from vicap_utils.ops.adapters import ModelRef, load_for_inference, model_ref
from vicap_utils.ops.io import VicapError, atomic_write_json, output_file


def predict_images(cap: Captioner, paths: list[Path], dec: Decoding, batch_size: int,
                   desc: str = "captioning") -> list[str]:
    """One caption per image file, `batch_size` images per `generate` call, with a progress bar."""
    from vicap_utils.images import load_rgb
    from vicap_utils.ops.progress import progress

    captions: list[str] = []
    for start in progress(range(0, len(paths), batch_size), desc=desc, unit="batch"):
        images = [load_rgb(p) for p in paths[start:start + batch_size]]
        captions += [alts[0][0] for alts in caption(cap, images=images, dec=dec)]
    return captions


def predict_file(ref: ModelRef, annotations: str | Path, images: str | Path, out: str | Path,
                 dec: Decoding | None = None, batch_size: int | None = None,
                 overwrite: bool = False) -> list[dict]:
    """Caption every image listed in a caption file with the model `ref` names; write COCO
    results ([{"image_id", "caption"}]) to `out` (an existing file vicap did not write only
    with `overwrite`). Decoding defaults to the adapter's `eval`."""
    from vicap_utils.data import load_captions
    from vicap_utils.ops.folders import (
        check_writable,
        refuse_aliases,
        refuse_foreign_files,
        replacing_files,
    )

    out = output_file(out, "predictions JSON")
    refuse_aliases({"--annotations": annotations, "--images": images, "--model": ref.adapter},
                   {"--out": out})
    check_writable(out.parent)
    cs = load_captions(annotations)
    folder = Path(images)
    if not folder.is_dir():
        raise VicapError(f"{folder}: images folder not found")
    missing = [info.file_name for info in cs.images.values()
               if not (folder / info.file_name).is_file()]
    if missing:
        raise VicapError(f"{folder}: {len(missing)} listed images missing, e.g. {missing[0]}")
    read = [("--images", folder / info.file_name) for info in cs.images.values()]
    if ref.adapter is not None:  # the adapter's files: its weights, vicap.json, tokenizer
        read += [("--model", path) for path in sorted(ref.adapter.iterdir())]
    refuse_aliases(read, {"--out": out})
    refuse_foreign_files(out.parent, [out.name], overwrite=overwrite)
    dec = dec or Decoding.from_eval(ref.eval)
    cap = load_for_inference(ref)
    ids = sorted(cs.images, key=str)
    start = time.time()
    captions = predict_images(cap, [folder / cs.images[i].file_name for i in ids], dec,
                              batch_size or ref.eval.batch_size)
    results = [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]
    with replacing_files(out.parent, [out.name], overwrite=overwrite):
        atomic_write_json(out, results)
    print(f"{len(results)} captions ({ref.label}, beam {dec.num_beams}) in "
          f"{time.time() - start:.1f} s -> {out}")
    return results


def cli_predict(args) -> int:
    """`vicap predict --model DIR [--no-adapter] --annotations FILE --images DIR --out FILE
    [--overwrite]`."""
    ref = model_ref(args.model, no_adapter=args.no_adapter)
    for name in ("num_beams", "max_new_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise VicapError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    ev = ref.eval
    dec = Decoding.from_eval(ev)
    dec.num_beams = args.num_beams or ev.num_beams
    dec.max_new_tokens = args.max_new_tokens or ev.max_new_tokens
    predict_file(ref, args.annotations, args.images, args.out, dec,
                 args.batch_size or ev.batch_size, overwrite=args.overwrite)
    return 0
