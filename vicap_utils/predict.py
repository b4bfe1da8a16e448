"""Batched caption generation (beam search by default) and `vicap predict`.

BLIP-1 decodes from image embeddings, so validation during training can reuse cached
vision features; the same function serves prediction from pixels, the notebooks and the demo.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vicap_utils.io import VicapError, atomic_write_json, output_file

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


@dataclass
class Decoding:
    """Generation settings shared by validation, `vicap predict` and the demo."""

    num_beams: int = 3
    max_new_tokens: int = 30
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1


def tidy(text: str) -> str:
    """Decoded text as a caption: one line, no space before punctuation, capitalised."""
    text = " ".join(text.replace("\n", " ").split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text[:1].upper() + text[1:]


def _generate_kwargs(dec: Decoding) -> dict:
    kwargs = dict(max_new_tokens=dec.max_new_tokens, num_beams=max(1, dec.num_beams),
                  repetition_penalty=dec.repetition_penalty,
                  num_return_sequences=dec.num_return_sequences)
    if dec.do_sample:
        kwargs.update(do_sample=True, temperature=dec.temperature, top_p=dec.top_p)
    if dec.num_return_sequences > 1:
        kwargs.update(return_dict_in_generate=True, output_scores=True)
    return kwargs


def base_model(model):
    """The transformers model inside a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """BLIP-1 vision features for a batch of pixel values."""
    inner = base_model(model)
    vision = inner.vision_model
    dtype = next(vision.parameters()).dtype
    return vision(pixel_values=pixel_values.to(next(vision.parameters()).device, dtype))[0]


@torch.no_grad()
def generate_ids(model, family: str, tokenizer, dec: Decoding,
                 pixel_values: torch.Tensor | None = None,
                 image_embeds: torch.Tensor | None = None):
    """Run generation; BLIP-1 starts from `[DEC]` exactly as in training."""
    inner = base_model(model)
    device = next(inner.parameters()).device
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        return _generate(inner, family, tokenizer, _generate_kwargs(dec), pixel_values,
                         image_embeds, model)


def _generate(inner, family: str, tokenizer, kwargs: dict, pixel_values, image_embeds, model):
    """BLIP-1 from `[DEC]` over image embeddings; BLIP-2 through its own generate()."""
    if family == "blip":
        if image_embeds is None:
            image_embeds = image_embeddings(model, pixel_values)
        device = image_embeds.device
        batch = image_embeds.shape[0]
        start = torch.full((batch, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
        return inner.text_decoder.generate(
            input_ids=start,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long,
                                              device=device),
            **kwargs,
        )
    if pixel_values is None:
        raise ValueError("BLIP-2 generation needs pixel values")
    device = next(inner.parameters()).device
    return inner.generate(pixel_values=pixel_values.to(device, inner.vision_model.dtype),
                          eos_token_id=tokenizer.eos_token_id, **kwargs)


def decode(tokenizer, sequences: torch.Tensor) -> list[str]:
    """Token ids → tidy captions (special tokens, BLIP-2's image placeholders included, dropped)."""
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return [tidy(t) for t in texts]


def caption_batch(loaded, images=None, image_embeds=None, dec: Decoding | None = None,
                  pixel_values: torch.Tensor | None = None
                  ) -> list[list[tuple[str, float | None]]]:
    """Captions for PIL images, pixel values or BLIP-1 embeddings: per image, [(caption, score)].

    With `num_return_sequences > 1` each image gets its alternative beams with their
    log-probability scores; otherwise one caption with score None.
    """
    dec = dec or Decoding()
    if images is not None:
        pixel_values = loaded.processor.image_processor(images, return_tensors="pt")[
            "pixel_values"]
    out = generate_ids(loaded.model, loaded.family, loaded.tokenizer, dec,
                       pixel_values=pixel_values, image_embeds=image_embeds)
    k = dec.num_return_sequences
    if k > 1:
        texts = decode(loaded.tokenizer, out.sequences)
        raw = out.sequences_scores
        scores = raw.tolist() if raw is not None else [None] * len(texts)
        return [list(zip(texts[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]))
                for i in range(len(texts) // k)]
    return [[(t, None)] for t in decode(loaded.tokenizer, out)]


def predict_images(loaded, paths: list[Path], dec: Decoding, batch_size: int = 16,
                   desc: str = "captioning") -> list[str]:
    """One caption per image file, in batches, with a progress bar."""
    from vicap_utils.images import load_rgb
    from vicap_utils.progress import progress as tqdm

    captions: list[str] = []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch"):
        images = [load_rgb(p) for p in paths[start:start + batch_size]]
        captions += [alts[0][0] for alts in caption_batch(loaded, images=images, dec=dec)]
    return captions


def predict_file(model_dir: str, annotations: str, images: str, out: str,
                 no_adapter: bool = False, dec: Decoding | None = None,
                 batch_size: int | None = None) -> list[dict]:
    """Caption every image listed in a COCO-style file; write COCO results JSON."""
    from vicap_utils.data import load_captions
    from vicap_utils.modeling import load_for_inference

    output_file(out, "predictions JSON")
    cs = load_captions(annotations)
    folder = Path(images)
    if not folder.is_dir():
        raise VicapError(f"{folder}: images folder not found")
    missing = [info.file_name for info in cs.images.values()
               if not (folder / info.file_name).is_file()]
    if missing:
        raise VicapError(f"{folder}: {len(missing)} listed images missing, e.g. {missing[0]}")
    if dec is None or batch_size is None:
        ev = _eval_settings(model_dir)
        dec = dec or Decoding(num_beams=ev.get("num_beams", 3),
                              max_new_tokens=ev.get("max_new_tokens", 30),
                              repetition_penalty=ev.get("repetition_penalty", 1.0))
        batch_size = batch_size or ev.get("batch_size", 16)
    loaded = load_for_inference(model_dir, no_adapter=no_adapter)
    ids = sorted(cs.images, key=str)
    start = time.time()
    captions = predict_images(loaded, [folder / cs.images[i].file_name for i in ids], dec,
                              batch_size)
    results = [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]
    atomic_write_json(out, results)
    which = "base model" if no_adapter else "adapter"
    print(f"{len(results)} captions ({which}, beam {dec.num_beams}) in "
          f"{time.time() - start:.1f} s -> {out}")
    return results


def _eval_settings(model_dir: str) -> dict:
    """The eval section saved with an adapter, or {} for a bare base model."""
    from vicap_utils.modeling import META_FILE, read_meta

    if (Path(model_dir) / META_FILE).is_file():
        return read_meta(model_dir).get("config", {}).get("eval", {})
    return {}


def cli_predict(args) -> int:
    """`vicap predict`: COCO results JSON for every image in the annotations file."""
    ev = _eval_settings(args.model)
    dec = Decoding(num_beams=args.num_beams or ev.get("num_beams", 3),
                   max_new_tokens=args.max_new_tokens or ev.get("max_new_tokens", 30),
                   repetition_penalty=ev.get("repetition_penalty", 1.0))
    predict_file(args.model, args.annotations, args.images, args.out,
                 no_adapter=args.no_adapter, dec=dec,
                 batch_size=args.batch_size or ev.get("batch_size", 16))
    return 0
