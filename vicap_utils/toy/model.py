"""The toy model: the `mini` base, a tiny BLIP-1 with the BERT entries the synthetic captions
need, pre-trained on them in English and cached (the tiny BLIP-2 is kaggle/tiny_blip2.py)."""

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from filelock import FileLock

from vicap_utils.data import load_captions
from vicap_utils.images import load_rgb
from vicap_utils.ops.env import cache_dir
from vicap_utils.ops.io import atomic_dir
from vicap_utils.ops.progress import progress
from vicap_utils.text import strip_diacritics
from vicap_utils.toy.data import captions_for, random_scene, synthetic_set
from vicap_utils.vocab import bert_vocab_path, encode_captions, stock_blip_tokenizer

# transformers 5 names the PIL image processor apart and warns when the default one falls back
# to it (no torchvision), even on access; older transformers have only the default (PIL).
PIL_PROCESSOR = (getattr(transformers, "BlipImageProcessorPil", None)
                 or transformers.BlipImageProcessor)


@dataclass(frozen=True)
class MiniSpec:
    """Architecture and English pre-training recipe of the tiny base (its cache key)."""
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    text_hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 64
    n_images: int = 600
    data_seed: int = 1000
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    version: int = 2


def mini_vocab() -> dict[str, int]:
    """The BERT entries the synthetic captions use (with or without diacritics), plus every
    special, single-character and `##`-character entry."""
    full = stock_blip_tokenizer()
    lines = bert_vocab_path().read_text(encoding="utf-8").splitlines()
    keep = {t for t in lines if t.startswith("[") and t.endswith("]") and "unused" not in t}
    keep |= {t for t in lines if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    rng, texts = random.Random(0), set()
    for _ in range(3000):  # a sample of every caption the generator writes, in both languages
        scene = random_scene(rng)
        texts.update(captions_for(scene, "vi", rng) + captions_for(scene, "en", rng))
    for text in texts | {strip_diacritics(t) for t in texts}:
        keep |= set(full.backend_tokenizer.encode(text, add_special_tokens=False).tokens)
        keep |= set(full.tokenize(text))
    return {t: i for i, t in enumerate(t for t in lines if t in keep)}


def build_tiny_blip(spec: MiniSpec):
    """An untrained BLIP-1 captioner of the spec's size, with its processor."""
    tok = stock_blip_tokenizer(mini_vocab())
    text = dict(vocab_size=len(tok), hidden_size=spec.text_hidden,
                intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                num_attention_heads=spec.heads, max_position_embeddings=spec.max_positions,
                encoder_hidden_size=spec.vision_hidden, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id, eos_token_id=2)
    vision = dict(hidden_size=spec.vision_hidden, intermediate_size=spec.intermediate,
                  num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                  image_size=spec.image_size, patch_size=spec.patch_size)
    torch.manual_seed(spec.seed)
    config = transformers.BlipConfig(text_config=text, vision_config=vision)
    model = transformers.BlipForConditionalGeneration(config)
    image_processor = PIL_PROCESSOR(size={"height": spec.image_size, "width": spec.image_size})
    return model, transformers.BlipProcessor(image_processor=image_processor, tokenizer=tok)


def pretrain_english(model, processor, spec: MiniSpec) -> list[float]:
    """Train every weight of the tiny BLIP on English synthetic captions; returns epoch losses."""
    folder = synthetic_set("en", spec.n_images, spec.data_seed)
    cs = load_captions(folder / "captions.json")
    ids = sorted(cs.images)
    images = [load_rgb(folder / "images" / cs.images[i].file_name) for i in ids]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    row = {img: k for k, img in enumerate(ids)}
    img_idx = torch.tensor([row[a.image_id] for a in cs.annotations])
    ids_t, mask_t, labels_t = encode_captions(
        processor.tokenizer, [a.caption for a in cs.annotations], max_length=32)
    n = len(cs.annotations)
    g = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    steps = spec.epochs * math.ceil(n / spec.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    losses = []
    with progress(total=steps, desc="mini base: English pre-training", unit="step") as bar:
        for _ in range(spec.epochs):
            order = torch.randperm(n, generator=g)
            total = 0.0
            for start in range(0, n, spec.batch_size):
                b = order[start:start + spec.batch_size]
                out = model(pixel_values=pixels[img_idx[b]], input_ids=ids_t[b],
                            attention_mask=mask_t[b], labels=labels_t[b])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                total += out.loss.item() * len(b)
                bar.update()
                bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
            losses.append(total / n)
    model.eval()
    return losses


def builtin_model(name: str) -> Path | None:
    """The folder of a built-in toy base (`mini`: built and cached on first use), else None."""
    if name != "mini":
        return None
    spec = MiniSpec()
    key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("mini-base") / key  # a new spec builds anew
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if (folder / "config.json").is_file():
            return folder
        print(f"Building the mini base model (first use only) into {folder}")
        start = time.time()
        model, processor = build_tiny_blip(spec)
        losses = pretrain_english(model, processor, spec)
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)
            (tmp / "mini_spec.json").write_text(json.dumps(
                {"spec": asdict(spec), "epoch_losses": losses,
                 "seconds": round(time.time() - start, 1)}, indent=2))
    print(f"mini base ready in {time.time() - start:.0f} s (final English loss {losses[-1]:.3f})")
    return folder

