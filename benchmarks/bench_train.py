"""Training and captioning speed of BLIP fine-tuning, measured on random weights of the real
shapes (speed and memory depend on shapes, not values), all in one run:

    python benchmarks/bench_train.py [--depth N | --full-depth | --tiny] [--steps 8]
        [--device cpu|cuda] [--blip2] [--out DIR]

Training (5 captions per image, batch 8, max_length 40, Vietnamese-extended vocabulary):
(a) full fine-tuning in fp32, the simple way: every weight trains, the ViT runs every step;
(b) LoRA (the `uitviic-blip` adapter) with the frozen ViT run every step;
(c) LoRA on vision features cached once (`captioner.image_features`, stored in fp16, cast back
at use), the caching timed apart. Generation: beam 3, 40 new tokens, one image at a time and
batched. Image decoding is timed apart too (JPEG → pixels). The rates give a projected
30-epoch `uitviic-blip` run. Each mode runs in a child process (forked on the CPU, spawned on
CUDA), so its peak memory is its own: CUDA `max_memory_allocated`, or on the CPU the child's
peak resident memory (VmHWM) above what it started with (the imported libraries), i.e. model,
optimiser state, activations and cache.
Writes DIR/bench_train.json and DIR/bench_train.md and prints the JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
import transformers
from PIL import Image
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)

from vicap_utils import captioner
from vicap_utils.config import Config, load_config
from vicap_utils.ops.progress import progress
from vicap_utils.vocab import extension_entries, stock_blip_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kaggle"))
from tiny_blip2 import byte_level_tokenizer  # the tiny BLIP-2's, shared with tests

TRAIN_MODES = ("full_ft_fp32", "lora_no_cache", "lora_cached")
GEN_MODES = ("one_at_a_time", "batched")
T4_BYTES = 15 * 2**30  # a T4's usable memory, the cap of the BLIP-2 run on a larger GPU


@dataclass(frozen=True)
class Shapes:
    """Model widths and depths; ViT and text decoder share `depth`, so their ratio stays 1:1 as
    in BLIP-base (12 and 12 layers)."""

    hidden: int = 768
    intermediate: int = 3072
    heads: int = 12
    depth: int = 12
    image_size: int = 384
    patch: int = 16
    new_rows: int = 3000  # Vietnamese rows appended to BERT's 30,524


TINY = Shapes(hidden=32, intermediate=64, heads=2, depth=1, image_size=32, new_rows=40)


@dataclass(frozen=True)
class Blip2Shapes:
    """BLIP-2 OPT-2.7b's widths (ViT-g, Q-Former, OPT), image size and query tokens; the depths
    come from `Shapes.depth` (`blip2_depths`)."""

    vision: int = 1408
    vision_mlp: int = 6144
    vision_heads: int = 16
    qformer: int = 768
    qformer_mlp: int = 3072
    qformer_heads: int = 12
    text: int = 2560
    text_mlp: int = 10240
    text_heads: int = 32
    vocab: int = 50272
    image_size: int = 224
    patch: int = 14
    queries: int = 32


TINY_BLIP2 = Blip2Shapes(vision=32, vision_mlp=64, vision_heads=2, qformer=32, qformer_mlp=64,
                         qformer_heads=2, text=64, text_mlp=128, text_heads=2, vocab=640,
                         image_size=32, patch=16, queries=4)


@dataclass(frozen=True)
class Run:
    """The run being projected: `uitviic-blip`, 30 epochs."""

    epochs: int = 30
    captions: int = 12_100
    train_images: int = 2_420
    val_images: int = 230


@dataclass
class Settings:
    """One benchmark run."""

    device: str
    shapes: Shapes
    steps: int  # timed training steps per mode
    blip2: bool = False
    blip2_shapes: Blip2Shapes = Blip2Shapes()
    amp_on_cpu: bool = False  # fp16 autocast and GradScaler for LoRA on the CPU too
    eight_bit_on_cpu: bool = False  # BLIP-2 8-bit on the CPU (bitsandbytes' CPU backend)
    warmup: int = 2  # untimed steps first
    batch: int = 8
    captions_per_image: int = 5
    max_length: int = 40
    gen_batch: int = 16
    gen_single: int = 4  # images captioned one call each
    beams: int = 3
    max_new_tokens: int = 40
    pool_images: int = 32  # images drawn for training; the cache holds all of them
    cache_batch: int = 16
    io_images: int = 32
    threads: int = 0  # torch CPU threads; 0 = torch's default
    seed: int = 0


# ---------------------------------------------------------------- inputs


def vietnamese_captions(n_images: int, per_image: int, seed: int) -> list[list[str]]:
    """`per_image` Vietnamese captions per image, from the synthetic set's generator."""
    from vicap_utils.toy.data import captions_for, random_scene

    rng = random.Random(seed)
    return [captions_for(random_scene(rng), "vi", rng, k=per_image) for _ in range(n_images)]


def syllable_like(n: int, seed: int) -> list[str]:
    """`n` distinct toned Vietnamese-looking syllables (onset + toned nucleus + coda)."""
    onsets = ("", "b", "c", "ch", "d", "đ", "g", "gi", "h", "kh", "l", "m", "n", "ng", "nh",
              "ph", "qu", "s", "t", "th", "tr", "v", "x")
    nuclei = ("a", "ă", "â", "e", "ê", "i", "o", "ô", "ơ", "u", "ư", "y", "ia", "uô", "ươ")
    codas = ("", "c", "ch", "m", "n", "ng", "nh", "p", "t", "i", "o", "u")
    tones = ("\u0301", "\u0300", "\u0309", "\u0303", "\u0323")
    words = [unicodedata.normalize("NFC", o + v[0] + t + v[1:] + c)
             for o in onsets for v in nuclei for c in codas for t in tones]
    random.Random(seed).shuffle(words)
    return words[:n]


def vocabulary_entries(stock, captions: list[str], n: int, seed: int) -> list[str]:
    """The extension the package would add for `captions`, topped up to `n` entries."""
    entries = extension_entries(stock, captions)
    known = set(entries) | set(stock.get_vocab())
    entries += [w for w in syllable_like(4 * n, seed) if w not in known]
    return entries[:n]


def random_images(n: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """`n` RGB images: smooth colour fields with noise (decode like photos, not pure noise)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(field.resize(size, Image.BICUBIC), dtype=np.int16)
        noisy = smooth + rng.integers(-12, 13, smooth.shape, dtype=np.int16)
        images.append(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
    return images


# ---------------------------------------------------------------- models


def build_blip(s: Settings, captions: list[str]) -> captioner.Captioner:
    """A random BLIP-1 of the shapes, its vocabulary extended for Vietnamese by the package."""
    sh, tok = s.shapes, stock_blip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=sh.hidden, intermediate_size=sh.intermediate,
                num_hidden_layers=sh.depth, num_attention_heads=sh.heads,
                encoder_hidden_size=sh.hidden, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id)
    vision = dict(hidden_size=sh.hidden, intermediate_size=sh.intermediate,
                  num_hidden_layers=sh.depth, num_attention_heads=sh.heads,
                  image_size=sh.image_size, patch_size=sh.patch)
    torch.manual_seed(s.seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision))
    size = {"height": sh.image_size, "width": sh.image_size}
    processor = BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tok)
    cap = captioner.Captioner(model=model, processor=processor, family="blip", base="random")
    captioner.extend_vocabulary(cap, entries=vocabulary_entries(tok, captions, sh.new_rows,
                                                                s.seed))
    return cap


def blip2_depths(depth: int) -> tuple[int, int, int]:
    """Layers of the ViT-g, Q-Former and OPT: BLIP-2 OPT-2.7b's 39, 12, 32 scaled by depth/12."""
    vision, qformer, opt = (max(1, round(n * depth / 12)) for n in (39, 12, 32))
    return vision, qformer, opt


def blip2_config(depth: int, tok, w: Blip2Shapes = Blip2Shapes()):
    """A BLIP-2 config of the widths `w` (default OPT-2.7b's), depths from `blip2_depths`."""
    from transformers import Blip2Config

    vision, qformer, opt = blip2_depths(depth)
    return Blip2Config(
        vision_config=dict(hidden_size=w.vision, intermediate_size=w.vision_mlp,
                           num_hidden_layers=vision, num_attention_heads=w.vision_heads,
                           image_size=w.image_size, patch_size=w.patch),
        qformer_config=dict(hidden_size=w.qformer, intermediate_size=w.qformer_mlp,
                            num_hidden_layers=qformer, num_attention_heads=w.qformer_heads,
                            encoder_hidden_size=w.vision),
        text_config=dict(model_type="opt", vocab_size=w.vocab, hidden_size=w.text,
                         ffn_dim=w.text_mlp, num_hidden_layers=opt,
                         num_attention_heads=w.text_heads, word_embed_proj_dim=w.text,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        num_query_tokens=w.queries, image_token_index=tok.convert_tokens_to_ids("<image>"))


def build_blip2(s: Settings, captions: list[str]) -> tuple[captioner.Captioner, str]:
    """A random BLIP-2 of `s.blip2_shapes` and how it was loaded: on CUDA (or the CPU with
    `s.eight_bit_on_cpu`) saved, then loaded through the package's loader (8-bit when
    bitsandbytes is installed, pinned to GPU 0 or the CPU); otherwise built in fp32 on the CPU."""
    import tempfile

    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    from vicap_utils.config import ModelConfig

    w, cuda = s.blip2_shapes, s.device == "cuda"
    tok = byte_level_tokenizer(captions, vocab_size=600)
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": w.image_size, "width": w.image_size}), tok,
        num_query_tokens=w.queries)
    torch.manual_seed(s.seed)
    if not (cuda or s.eight_bit_on_cpu):
        model = Blip2ForConditionalGeneration(blip2_config(s.shapes.depth, tok, w))
        return (captioner.Captioner(model=model, processor=processor, family="blip2",
                                    base="random"), "fp32 on the CPU")
    eight_bit = has_bitsandbytes()
    with tempfile.TemporaryDirectory() as folder:
        torch.set_default_dtype(torch.float16 if cuda else torch.float32)
        with torch.device(s.device):
            model = Blip2ForConditionalGeneration(blip2_config(s.shapes.depth, tok, w))
            # transformers starts the query tokens at zero; trained ones are not, and zeros make
            # the Q-Former's first LayerNorm (eps 1e-12) overflow fp16 gradients to NaN
            torch.nn.init.normal_(model.query_tokens, std=model.config.initializer_range)
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        cfg = ModelConfig(family="blip2", base=folder, load_in_8bit=eight_bit)
        # device_index is accelerate's device_map value: GPU 0, or "cpu"
        cap = captioner.load_base(cfg, load_in_8bit=eight_bit, log=lambda _: None,
                                  device_index=0 if cuda else "cpu")
    return captioner.place(cap, s.device), (f"8-bit language model (bitsandbytes, {s.device})"
                                            if eight_bit else "bitsandbytes not installed")


def has_bitsandbytes() -> bool:
    """Whether bitsandbytes imports."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def build(s: Settings) -> tuple[captioner.Captioner, list[list[str]], str]:
    """(captioner on the device, captions per pool image, how the model was loaded)."""
    captions = vietnamese_captions(s.pool_images, s.captions_per_image, s.seed)
    flat = [c for group in captions for c in group]
    if s.blip2:
        cap, how = build_blip2(s, flat)
        return cap, captions, how
    return captioner.place(build_blip(s, flat), s.device), captions, "fp32"


def profile(s: Settings) -> Config:
    """The recipe benchmarked: `uitviic-blip` (LoRA r16 on the decoder's self-attention, new
    token rows trained) or `flickr8k-blip2` (r8 on the Q-Former and OPT attention)."""
    return load_config("flickr8k-blip2" if s.blip2 else "uitviic-blip")


def add_lora(cap: captioner.Captioner, s: Settings) -> None:
    """Wrap the model with the profile's LoRA adapter (base frozen)."""
    captioner.add_lora(cap, captioner.lora_config(cap, profile(s).lora))


# ---------------------------------------------------------------- measuring


def sync(device: str) -> None:
    """Wait for queued GPU work, so the clock reads finished work."""
    if device == "cuda":
        torch.cuda.synchronize()


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class PeakMemory:
    """Peak memory of the code inside the block, in MiB: CUDA allocations, or the growth of the
    process's peak resident memory above its resident memory at the start."""

    def __init__(self, device: str) -> None:
        self.device, self.mib = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # peak := current resident memory
            self.start = status_mib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.mib = (torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda"
                    else status_mib("VmHWM") - self.start)


def isolated(func: Callable[..., Any], s: Settings, *args: Any) -> Any:
    """`func(s, *args)` in a child process, so it starts clean and its memory peak is its own.

    On the CPU the child is forked (fast; the parent must not have run torch work before: a
    child forked after OpenMP was used hangs). A CUDA child is spawned: importing peft imports
    bitsandbytes, which initialises CUDA, and a forked child cannot use CUDA after that.
    """
    method = "spawn" if s.device == "cuda" else "fork"
    with multiprocessing.get_context(method).Pool(1) as pool:
        return pool.apply(in_child, (func, s, *args))


def in_child(func: Callable[..., Any], s: Settings, *args: Any) -> Any:
    """Set the thread count, then run `func(s, *args)`."""
    if s.threads:
        torch.set_num_threads(s.threads)
    return func(s, *args)


def uses_amp(s: Settings, mode: str) -> bool:
    """Whether a training mode runs under fp16 autocast and a GradScaler: the LoRA modes on
    CUDA, and on the CPU when `s.amp_on_cpu`."""
    return mode != "full_ft_fp32" and (s.device == "cuda" or s.amp_on_cpu)


# ---------------------------------------------------------------- training


@dataclass
class Batch:
    """One training step's inputs: pool image rows and their encoded captions."""

    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def caption_batches(cap: captioner.Captioner, captions: list[list[str]], s: Settings,
                    n: int) -> list[Batch]:
    """`n` batches of (image, caption) pairs drawn like a shuffled epoch: every caption of every
    image once before any repeats."""
    pairs = [(row, c) for row, group in enumerate(captions) for c in group]
    rng = random.Random(s.seed)
    order: list[tuple[int, str]] = []
    while len(order) < n * s.batch:
        order += rng.sample(pairs, len(pairs))
    prefix = captioner.image_prefix(cap)
    batches = []
    for i in range(n):
        chunk = order[i * s.batch:(i + 1) * s.batch]
        ids, mask, labels = captioner.encode_captions(
            cap.tokenizer, [c for _, c in chunk], s.max_length, prefix=prefix)
        batches.append(Batch(torch.tensor([r for r, _ in chunk]), ids, mask, labels))
    return batches


def cache_features(cap: captioner.Captioner, pixels: torch.Tensor, s: Settings
                   ) -> tuple[torch.Tensor, float]:
    """(fp16 features of every pool image, images/s), as the package's cache stores them."""
    cap.model.eval()
    sync(s.device)
    start = time.perf_counter()
    chunks = [captioner.image_features(cap.model, pixels[i:i + s.cache_batch].to(s.device))
              .half().cpu() for i in range(0, len(pixels), s.cache_batch)]
    sync(s.device)
    return torch.cat(chunks), len(pixels) / (time.perf_counter() - start)


def pool_pixels(cap: captioner.Captioner, n: int, seed: int) -> torch.Tensor:
    """Pixel values of `n` random images at the processor's size."""
    size = cap.processor.image_processor.size["height"]
    return captioner.pixel_values(cap, random_images(n, (size, size), seed))


def model_dtypes(cap: captioner.Captioner) -> tuple[torch.dtype, torch.dtype]:
    """(vision encoder dtype, for pixels; the dtype of what reads cached features: BLIP-1's
    decoder, BLIP-2's Q-Former)."""
    inner = captioner.inner_model(cap.model)
    reader = (next(inner.text_decoder.parameters()).dtype if cap.family == "blip"
              else inner.query_tokens.dtype)
    return next(inner.vision_model.parameters()).dtype, reader


def train_mode(s: Settings, mode: str,
               describe: Callable[[captioner.Captioner], dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """Train `s.warmup` + `s.steps` steps in one mode; samples/s, peak memory, parameters, the
    last step's gradient norm, and what `describe` says of the model as loaded."""
    with PeakMemory(s.device) as memory:
        if s.blip2 and s.device == "cuda":
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, T4_BYTES / torch.cuda.get_device_properties(0).total_memory))
        cap, captions, loaded = build(s)
        pixels = pool_pixels(cap, s.pool_images, s.seed)
        batches = caption_batches(cap, captions, s, s.warmup + s.steps)
        result: dict[str, Any] = {"loaded": loaded, **(describe(cap) if describe else {})}
        cached = mode == "lora_cached"
        if mode == "full_ft_fp32":
            cap.model.requires_grad_(True)
        else:
            add_lora(cap, s)
        if cached:
            features, rate = cache_features(cap, pixels, s)
            result.update(cache_images_per_s=rate,
                          cache_mib_per_image=features[0].numel() * 2 / 2**20)
        params = [p for p in cap.model.parameters() if p.requires_grad]
        t = profile(s).train
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        use_amp = uses_amp(s, mode)
        scaler = torch.amp.GradScaler(s.device, enabled=use_amp)
        pixel_dtype, feature_dtype = model_dtypes(cap)
        cap.model.train()
        start, losses, norms = 0.0, [], []
        for i, b in enumerate(progress(batches, desc=mode, unit="step")):
            if i == s.warmup:
                sync(s.device)
                start = time.perf_counter()
            image = (features[b.rows].to(s.device, feature_dtype) if cached
                     else pixels[b.rows].to(s.device, pixel_dtype))
            with torch.autocast(s.device, dtype=torch.float16, enabled=use_amp):
                logits = captioner.forward(cap.model, cap.family, image,
                                           b.input_ids.to(s.device),
                                           b.attention_mask.to(s.device), cached=cached)
                step_loss = captioner.loss(logits, b.labels, smoothing=t.label_smoothing)
            scaler.scale(step_loss).backward()
            scaler.unscale_(optimizer)
            norms.append(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm).detach())
            losses.append(step_loss.detach())
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        sync(s.device)
        elapsed = time.perf_counter() - start
    result.update(samples_per_s=s.steps * s.batch / elapsed, step_s=elapsed / s.steps,
                  peak_memory_mib=memory.mib, device_name=device_name(s.device),
                  trainable_params=sum(p.numel() for p in params),
                  total_params=sum(p.numel() for p in cap.model.parameters()),
                  vocab_size=logits.shape[-1], final_loss=step_loss.item(), amp=use_amp,
                  losses_finite=bool(torch.isfinite(torch.stack(losses)).all()),
                  last_grad_norm=norms[-1].item(),
                  nonfinite_grad_steps=int((~torch.isfinite(torch.stack(norms))).sum()))
    return result


# ---------------------------------------------------------------- generation and images


def generation_modes(s: Settings) -> dict[str, Any]:
    """Images/s of beam search from pixels: `s.gen_single` images one per call, then
    `s.gen_batch` images in one call."""
    with PeakMemory(s.device) as memory:
        cap, _, loaded = build(s)
        add_lora(cap, s)
        cap.model.eval()
        pixels = pool_pixels(cap, s.gen_batch, s.seed + 1)
        dec = captioner.Decoding(num_beams=s.beams, max_new_tokens=s.max_new_tokens)
        captioner.caption(cap, pixels=pixels[:1].to(s.device), dec=dec)  # warm-up
        timings = {}
        for mode, n, size in (("one_at_a_time", s.gen_single, 1),
                              ("batched", s.gen_batch, s.gen_batch)):
            sync(s.device)
            start = time.perf_counter()
            for i in progress(range(0, n, size), desc=f"generate {mode}", unit="call"):
                out = captioner.caption(cap, pixels=pixels[i:i + size].to(s.device), dec=dec)
            sync(s.device)
            timings[mode] = {"images_per_s": n / (time.perf_counter() - start), "batch": size,
                             "images": n}
    timings["peak_memory_mib"] = memory.mib
    timings["loaded"] = loaded
    timings["example_caption"] = out[0][0][0][:80]
    return timings


def image_loading(s: Settings) -> dict[str, Any]:
    """Images/s of JPEG decoding plus the processor (640x480, quality 90 → pixel values)."""
    size = 224 if s.blip2 else s.shapes.image_size
    processor = BlipImageProcessor(size={"height": size, "width": size})
    blobs = []
    for im in random_images(s.io_images, (640, 480), s.seed + 2):
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            processor(im.convert("RGB"), return_tensors="pt")
    return {"images_per_s": len(blobs) / (time.perf_counter() - start)}


# ---------------------------------------------------------------- report


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's with its core count."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "CPU")
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s))"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return a / b if a and b else None


def projection(train: dict[str, dict[str, Any]], gen: dict[str, Any], load_rate: float,
               s: Settings, run: Run = Run()) -> dict[str, Any]:
    """Projected hours of a 30-epoch `uitviic-blip` run, per part, for each training mode."""
    val_decoding = run.epochs * run.val_images / gen["batched"]["images_per_s"]
    all_images = run.train_images + run.val_images
    out: dict[str, Any] = {}
    for mode, r in train.items():
        if mode == "lora_cached":
            parts = {"feature caching (once)": all_images / r["cache_images_per_s"],
                     "image decoding (once)": all_images / load_rate}
        else:
            parts = {"image decoding (every epoch)": run.epochs * (run.captions + run.val_images)
                     / load_rate}
        parts["training steps"] = run.epochs * run.captions / r["samples_per_s"]
        parts["validation decoding"] = val_decoding
        hours = {k: v / 3600 for k, v in parts.items()}
        out[mode] = {"hours": hours, "total_hours": sum(hours.values()),
                     "dominant": max(hours, key=hours.get)}
    cached = train["lora_cached"]
    per_image = s.captions_per_image / (1 / cached["cache_images_per_s"]
                                        + s.captions_per_image / cached["samples_per_s"])
    out["lora_cached_first_epoch_samples_per_s"] = per_image
    out["feature_cache_gib"] = all_images * cached["cache_mib_per_image"] / 1024
    return out


def build_report(s: Settings) -> dict[str, Any]:
    """Run every mode (each in its own child) and gather rates, ratios and the projection."""
    load_before = os.getloadavg()[0]
    modes = ("lora_no_cache", "lora_cached") if s.blip2 else TRAIN_MODES
    train = {m: isolated(train_mode, s, m) for m in modes}
    gen = isolated(generation_modes, s)
    loading = isolated(image_loading, s)
    first = next(iter(train.values()))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/bench_train.py", *sys.argv[1:]]),
        "device": first["device_name"],
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": sys.version.split()[0]},
        "model": "BLIP-2 OPT-2.7b shape" if s.blip2 else "BLIP-base shape",
        "loaded": first["loaded"],
        "settings": {**asdict(s), "shapes": asdict(s.shapes)},
        "vocab_size": first["vocab_size"], "total_params": first["total_params"],
        "train": train, "generate": gen, "image_loading": loading,
    }
    if s.blip2:
        report["skipped"] = "full fine-tuning (3.8 B weights do not fit a T4)"
    cached, plain, full = (train.get(m, {}).get("samples_per_s") for m in (
        "lora_cached", "lora_no_cache", "full_ft_fp32"))
    report["ratios"] = {
        "cache_vs_no_cache": ratio(cached, plain),
        "batched_vs_one_at_a_time": ratio(gen["batched"]["images_per_s"],
                                          gen["one_at_a_time"]["images_per_s"]),
        "lora_no_cache_vs_full_ft": ratio(plain, full),
        "lora_cached_vs_full_ft": ratio(cached, full),
    }
    if not s.blip2:
        report["projection_uitviic_blip_30_epochs"] = projection(
            train, gen, loading["images_per_s"], s)
        report["ratios"]["cache_first_epoch_vs_no_cache"] = ratio(
            report["projection_uitviic_blip_30_epochs"]["lora_cached_first_epoch_samples_per_s"],
            plain)
    return report


def fmt(x: float | None, digits: int = 2) -> str:
    """A number for the table, or a dash."""
    return "–" if x is None else f"{x:,.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    """The report as markdown: setup, rates, ratios against the targets, projection."""
    s, sh = r["settings"], r["settings"]["shapes"]
    if s["blip2"]:
        vision, qformer, opt = blip2_depths(sh["depth"])
        w = s["blip2_shapes"]
        shapes = (f"ViT-g {vision}, Q-Former {qformer}, OPT {opt} layers (the real model: 39, "
                  f"12, 32; scaled alike), widths {w['vision']}/{w['qformer']}/{w['text']}, "
                  f"image {w['image_size']} px")
    else:
        shapes = (f"depth {sh['depth']} for the vision encoder and the text decoder alike (the "
                  f"real model: 12 and 12, so their ratio is kept), widths {sh['hidden']}/"
                  f"{sh['intermediate']}/{sh['heads']} heads, image {sh['image_size']} px")
    lines = [
        f"**{r['model']}**, random weights — {r['date']} — `{r['command']}`",
        "",
        f"- device: {r['device']}; model loaded as {r['loaded']}; 1-min load average "
        f"{r['load_average_1min']['start']:.1f} at the start, "
        f"{r['load_average_1min']['end']:.1f} at the end",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        f"- shapes: {shapes}; vocabulary {r['vocab_size']:,}; "
        f"{r['total_params'] / 1e6:.1f} M parameters",
        f"- training: batch {s['batch']}, {s['captions_per_image']} captions per image, "
        f"max_length {s['max_length']}, {s['warmup']} warm-up + {s['steps']} timed steps, "
        "AdamW, label smoothing 0.05, fp16 autocast for LoRA on CUDA "
        f"({'fp16 autocast' if s['amp_on_cpu'] else 'fp32'} on the CPU); "
        "rates exclude image decoding (timed apart)",
        "- peak memory: " + ("CUDA max_memory_allocated per mode" if s["device"] == "cuda" else
                             "growth of the forked child's peak resident memory (VmHWM) per "
                             "mode: model, optimiser state, activations, cache"),
        "",
        "| training mode | samples/s | s/step | peak memory MiB | trainable params |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, t in r["train"].items():
        lines.append(f"| {mode} | {fmt(t['samples_per_s'])} | {fmt(t['step_s'], 3)} | "
                     f"{fmt(t['peak_memory_mib'], 0)} | {t['trainable_params']:,} |")
    g = r["generate"]
    lines += ["", "| generation (beam " f"{s['beams']}, {s['max_new_tokens']} new tokens) | "
              "images/s |", "|---|---:|"]
    for mode in GEN_MODES:
        lines.append(f"| {mode} (batch {g[mode]['batch']}, {g[mode]['images']} images) | "
                     f"{fmt(g[mode]['images_per_s'])} |")
    lines.append(f"| image loading (JPEG 640x480 → pixels) | "
                 f"{fmt(r['image_loading']['images_per_s'])} |")
    rt = r["ratios"]
    lines += ["", "| ratio | measured | target |", "|---|---:|---|",
              f"| LoRA cached / LoRA no cache (steady) | {fmt(rt['cache_vs_no_cache'])} | "
              "≥ 4 (CPU, BLIP-base) |",
              f"| LoRA cached incl. caching, first epoch / no cache | "
              f"{fmt(rt.get('cache_first_epoch_vs_no_cache'))} | |",
              f"| batched / one-at-a-time generation | {fmt(rt['batched_vs_one_at_a_time'])} | "
              "≥ 8 (GPU) |",
              f"| LoRA no cache / full FT | {fmt(rt['lora_no_cache_vs_full_ft'])} | |",
              f"| LoRA cached / full FT | {fmt(rt['lora_cached_vs_full_ft'])} | |"]
    if "skipped" in r:
        lines += ["", f"Not measured: {r['skipped']}."]
    p = r.get("projection_uitviic_blip_30_epochs")
    if p:
        run = Run()
        lines += ["", f"Projected 30-epoch `uitviic-blip` run on this device ({run.captions:,} "
                  f"captions and {run.train_images:,} images per epoch, {run.val_images} "
                  "validation images decoded each epoch; hours):", "",
                  "| training mode | image decoding | feature caching | training steps | "
                  "validation decoding | total | dominant |", "|---|---:|---:|---:|---:|---:|---|"]
        for mode in r["train"]:
            h = p[mode]["hours"]
            decoding = next(v for k, v in h.items() if k.startswith("image decoding"))
            lines.append(f"| {mode} | {fmt(decoding)} | {fmt(h.get('feature caching (once)'))}"
                         f" | {fmt(h['training steps'])} | {fmt(h['validation decoding'])} | "
                         f"{fmt(p[mode]['total_hours'])} | {p[mode]['dominant']} |")
        lines += ["", f"LoRA with the cache, first epoch including the caching: "
                  f"{fmt(p['lora_cached_first_epoch_samples_per_s'])} samples/s; the fp16 "
                  f"feature cache of {run.train_images + run.val_images:,} images takes "
                  f"{fmt(p['feature_cache_gib'])} GiB of RAM. Random weights never emit [SEP], "
                  "so every caption runs the full 40 tokens: validation decoding is an upper "
                  "bound."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def settings_from(argv: list[str] | None) -> tuple[Settings, Path | None]:
    """Parse the command line into Settings and the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=None,
                        help="layers of the ViT and of the decoder (default: 2 on CPU, 12 on CUDA)")
    parser.add_argument("--full-depth", action="store_true", help="12 layers, as BLIP-base")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per mode")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--blip2", action="store_true",
                        help="BLIP-2 OPT-2.7b shape: batch 4, 8-bit on CUDA, capped at 15 GiB")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's; --tiny: 1)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and table")
    args = parser.parse_args(argv)
    depth = 12 if args.full_depth or (args.device == "cuda" and args.depth is None) else (
        args.depth or 2)
    shapes = TINY if args.tiny else replace(Shapes(), depth=depth)
    cuda = args.device == "cuda"
    s = Settings(device=args.device, shapes=shapes, blip2=args.blip2, gen_batch=args.gen_batch,
                 gen_single=args.gen_batch if cuda else min(4, args.gen_batch),
                 steps=args.steps or (30 if cuda else 8), warmup=1 if args.tiny else 2,
                 batch=4 if args.blip2 else 8, pool_images=128 if cuda else 32,
                 cache_batch=64 if cuda else 16, io_images=8 if args.tiny else 32,
                 threads=args.threads or (1 if args.tiny else 0))
    if args.tiny:
        s = replace(s, blip2_shapes=TINY_BLIP2, pool_images=4, cache_batch=4,
                    gen_batch=min(s.gen_batch, 4), gen_single=2, max_new_tokens=8)
    return s, args.out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the JSON, and write DIR/bench_train.json and DIR/bench_train.md."""
    s, out = settings_from(argv)
    report = build_report(s)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_train.json").write_text(text + "\n", encoding="utf-8")
        (out / "bench_train.md").write_text(markdown(report), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
