"""LoRA fine-tuning on HF Accelerate: resumable, early-stopped on validation CIDEr.

Run folder: `last/` (everything needed to resume, written atomically: trainable weights,
optimizer, scheduler, scaler, RNG states, epoch/step, history), `best/` and `final/`
(adapters), `history.csv`, `loss_curve.png`, `config.json`, `data/{train,val}.json`.
The data order is a function of (seed, epoch), so a run killed at any moment and resumed
from `last/` ends with the same adapter as an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicap_utils.config import Config, config_from_dict, diff_keys, load_config, save_config
from vicap_utils.io import (
    VicapError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    make_output_dir,
    read_json,
    recover_dir,
)

# Settings a resumed run must share with the checkpoint; everything else may change.
RESUME_KEYS = ["model.family", "model.base", "model.extend_vocab", "model.max_length",
               "model.prompt", "lora.r", "lora.alpha", "lora.target_modules",
               "lora.cross_attention", "lora.train_new_embeddings", "data.source",
               "data.train_annotations", "train.seed", "train.batch_size", "train.grad_accum"]
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_CIDEr", "seconds"]


@dataclass
class RunState:
    """Progress that `last/state.json` records."""

    epoch: int = 0  # epochs fully done
    batches_done: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimizer steps
    best_cider: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stop: bool = False  # early stop or max_steps reached
    finished: bool = False  # final/ written
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # running sums of the current epoch
    loss_count: int = 0
    vocab_entries: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def mixed_precision(setting: str) -> str:
    """auto → bf16 where supported, fp16 on other GPUs (T4, P100), no on the CPU."""
    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (LoRA and new token rows), detached, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Next-token cross-entropy with label smoothing; -100 labels are ignored."""
    logits = logits[:, -labels.size(1):, :]
    shifted = logits[:, :-1, :].float().reshape(-1, logits.size(-1))
    target = labels[:, 1:].reshape(-1).to(shifted.device)
    return torch.nn.functional.cross_entropy(shifted, target, ignore_index=-100,
                                             label_smoothing=smoothing)


def forward_logits(model, family: str, batch: dict[str, torch.Tensor], cached: bool):
    """Logits for a batch; BLIP-1 may take cached vision features instead of pixels."""
    from vicap_utils.predict import base_model

    inner = base_model(model)
    if family == "blip":
        embeds = batch["image"] if cached else inner.vision_model(pixel_values=batch["image"])[0]
        out = inner.text_decoder(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"],
                                 encoder_hidden_states=embeds, return_dict=True)
        return out.logits
    return model(pixel_values=batch["image"], input_ids=batch["input_ids"],
                 attention_mask=batch["attention_mask"], return_dict=True).logits


class CaptionLM(torch.nn.Module):
    """The trainable model behind one forward, so DDP sees (and syncs) every training step,
    cached-feature path included."""

    def __init__(self, model, family: str, cached: bool) -> None:
        super().__init__()
        self.model, self.family, self.cached = model, family, cached

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        batch = {"image": image, "input_ids": input_ids, "attention_mask": attention_mask}
        return forward_logits(self.model, self.family, batch, self.cached)


def quick_cider(predictions: dict[Any, str], references: dict[Any, list[str]]) -> float:
    """CIDEr-D with the pure-Python tokenizer (no JVM per epoch) for model selection."""
    from pycocoevalcap.cider.cider import Cider

    from vicap_utils.metrics import python_tokenize

    keys = list(predictions)
    if not keys:
        return 0.0
    res = {k: [python_tokenize(predictions[k])] for k in keys}
    gts = {k: [python_tokenize(r) for r in references[k]] for k in keys}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


class Trainer:
    """One training run: builds everything from a Config, trains, checkpoints, resumes."""

    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False,
                 overwrite: bool = False, log=print) -> None:
        self.cfg, self.out, self.log = cfg, Path(out_dir), log
        self.resume, self.overwrite = resume, overwrite
        self.state = RunState()

    # ---- folder checks -------------------------------------------------------------------
    def _check_folder(self) -> dict[str, Any] | None:
        """Refuse to clobber a run; return the checkpoint's state when resuming."""
        if self.out.exists() and not self.out.is_dir():
            raise VicapError(f"{self.out}: is a file; --out needs a folder for the run")
        make_output_dir(self.out)
        last = recover_dir(self.out / "last")
        finished = (self.out / "final").is_dir()
        if self.overwrite and not self.resume:
            for name in ("last", "best", "final", "data"):
                shutil.rmtree(self.out / name, ignore_errors=True)
            for name in ("history.csv", "loss_curve.png", "config.json", "summary.json"):
                (self.out / name).unlink(missing_ok=True)
            return None
        if not self.resume:
            if finished:
                raise VicapError(f"{self.out}: holds a finished run; use --resume to continue "
                                 "it or --overwrite to start again")
            if last is not None:
                raise VicapError(f"{self.out}: holds an unfinished run in last/; use --resume "
                                 "to continue it or --overwrite to start again")
            return None
        if last is None or not (last / "state.json").is_file():
            raise VicapError(f"{self.out}/last: no checkpoint to resume from; "
                             "run without --resume to start")
        saved = read_json(last / "state.json", "checkpoint state")
        changed = diff_keys(config_from_dict(saved["config"], f"{last}/state.json"),
                            self.cfg, RESUME_KEYS)
        if changed:
            raise VicapError(f"{self.out}/last: cannot resume, the config differs in "
                             f"{', '.join(changed)} (use the run's config.json, or --overwrite)")
        return saved

    # ---- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Data, model, vocabulary, LoRA, optimizer, scheduler, loaders."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader
        from transformers import get_scheduler

        from vicap_utils.batches import EpochSampler, collate, image_prefix_ids
        from vicap_utils.modeling import (
            add_lora,
            extend_vocabulary,
            load_base,
            print_trainable,
            trainable_table,
        )
        from vicap_utils.sources import resolve_data

        cfg = self.cfg
        saved = self._check_folder()
        self.accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train.mixed_precision),
                                       gradient_accumulation_steps=cfg.train.grad_accum)
        self.main = self.accelerator.is_main_process
        if not self.main:
            self.log = lambda *args, **kwargs: None
        set_seed(cfg.train.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.main:
            save_config(cfg, self.out / "config.json")
        with self.accelerator.main_process_first():
            self.data = resolve_data(cfg, self.out if self.main else None)
        self.log(f"data: {len(self.data.train.images)} train / {len(self.data.val.images)} val "
                 f"images, {len(self.data.train.annotations)} training captions")

        self.loaded = load_base(cfg.model, device_index=self.accelerator.local_process_index)
        self.family = cfg.model.family
        if self.family == "blip" and cfg.model.extend_vocab:
            captions = [a.caption for a in self.data.train.annotations]
            before = self._vocab_report(self.loaded.tokenizer, captions)
            entries = extend_vocabulary(self.loaded, captions=captions,
                                        entries=saved["vocab_entries"] if saved else None)
            after = self._vocab_report(self.loaded.tokenizer, captions)
            self.vocab_summary = {"added_entries": len(entries), "before": before,
                                  "after": after}
            self.log(f"vocabulary: +{len(entries)} entries; caption round-trip "
                     f"{100 * before['roundtrip_rate']:.1f} % → "
                     f"{100 * after['roundtrip_rate']:.1f} %, tokens/caption "
                     f"{before['tokens_per_caption']:.1f} → {after['tokens_per_caption']:.1f}")
        else:
            entries, self.vocab_summary = [], {}
        self.state.vocab_entries = entries
        self.state.config = cfg.to_dict()
        model = add_lora(self.loaded, cfg.lora)
        self.trainable = trainable_table(model)
        if self.main:
            print_trainable(model)

        self.cached = cfg.train.cache_vision_features and self.family == "blip"
        if cfg.train.cache_vision_features and self.family != "blip":
            self.log("notice: the vision-feature cache serves BLIP-1 only; using pixels")
        device = self.accelerator.device
        model.to(device)
        train_src, train_rows = self._image_source(self.data.train, self.data.train_images,
                                                   "train")
        self.val_src, self.val_rows = self._image_source(self.data.val, self.data.val_images,
                                                         "val")
        prefix = image_prefix_ids(self.loaded.processor, self.family,
                                  getattr(self.loaded.model.config, "num_query_tokens", None))
        self.train_ds = self._pairs(self.data.train, train_src, train_rows, prefix)
        self.val_ds = self._pairs(self.data.val, self.val_src, self.val_rows, prefix)

        lr, emb_lr = cfg.train.lr, cfg.train.embedding_lr or cfg.train.lr
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if "trainable_tokens" not in n], "lr": lr},
            {"params": [p for n, p in params if "trainable_tokens" in n], "lr": emb_lr,
             "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.train.weight_decay)
        self.sampler = EpochSampler(len(self.train_ds), cfg.train.seed)
        loader = DataLoader(self.train_ds, batch_size=cfg.train.batch_size, sampler=self.sampler,
                            collate_fn=collate, num_workers=cfg.train.num_workers)
        self.steps_per_epoch = math.ceil(len(loader) / cfg.train.grad_accum)
        total = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        scheduler = get_scheduler(cfg.train.scheduler if cfg.train.scheduler != "constant"
                                  else "constant_with_warmup", optimizer,
                                  num_warmup_steps=int(cfg.train.warmup_ratio * total),
                                  num_training_steps=max(total, 1))
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            CaptionLM(model, self.family, self.cached), optimizer, loader, scheduler)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.train.grad_accum)
        if saved:
            self._load_checkpoint(saved)

    @staticmethod
    def _vocab_report(tokenizer, captions: list[str]) -> dict[str, Any]:
        from vicap_utils.vocab import tokenizer_report

        return tokenizer_report(tokenizer, captions).as_dict()

    def _image_source(self, cs, folder: Path, name: str):
        """(row → tensor, image id → row): cached vision features, or pixels decoded on demand."""
        from vicap_utils.images import load_rgb

        ids = sorted(cs.images, key=str)
        paths = [folder / cs.images[i].file_name for i in ids]
        proc = self.loaded.processor.image_processor
        rows = {img: k for k, img in enumerate(ids)}
        if not self.cached:
            return (lambda row: proc(load_rgb(paths[row]),
                                     return_tensors="pt")["pixel_values"][0]), rows
        feats = self._encode_all(paths, proc, name)
        return (lambda row: feats[row]), rows

    @torch.no_grad()
    def _encode_all(self, paths: list[Path], proc, name: str) -> torch.Tensor:
        """Vision features of every image once (the ViT is frozen, so they never change)."""
        from vicap_utils.images import load_rgb
        from vicap_utils.predict import image_embeddings
        from vicap_utils.progress import progress as tqdm

        model = self.loaded.model
        model.eval()
        chunks = []
        for start in tqdm(range(0, len(paths), 64), desc=f"caching {name} image features",
                          unit="batch", disable=not self.main):
            pix = proc([load_rgb(p) for p in paths[start:start + 64]],
                       return_tensors="pt")["pixel_values"]
            chunks.append(image_embeddings(model, pix).cpu())
        return torch.cat(chunks)

    def _pairs(self, cs, source, rows: dict, prefix: list[int]):
        """Tokenise every caption once; pair it with its image row."""
        from vicap_utils.batches import CaptionPairs, encode_captions

        anns = [a for a in cs.annotations if a.image_id in rows]
        ids, mask, labels = encode_captions(self.loaded.tokenizer, [a.caption for a in anns],
                                            self.cfg.model.max_length, self.cfg.model.prompt,
                                            prefix)
        return CaptionPairs([rows[a.image_id] for a in anns], ids, mask, labels, source)

    def peft_model(self):
        """The peft model inside the (possibly DDP-wrapped) training module."""
        return self.accelerator.unwrap_model(self.model).model

    # ---- checkpoints ---------------------------------------------------------------------
    def _state_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.state)

    def save_last(self) -> None:
        """Write last/ atomically: weights, optimizer, scheduler, scaler, RNG, progress."""
        self.accelerator.wait_for_everyone()
        if not self.main:
            return
        from safetensors.torch import save_file

        model = self.peft_model()
        with atomic_dir(self.out / "last") as tmp:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            atomic_write_json(tmp / "state.json", self._state_dict())

    def _load_checkpoint(self, saved: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        last = self.out / "last"
        model = self.peft_model()
        weights = load_file(str(last / "trainable.safetensors"))
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise VicapError(f"{last}: checkpoint does not fit this model ({sorted(missing)[0]})")
        model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(last / "scheduler.pt", weights_only=False))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and (last / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(last / "scaler.pt", weights_only=False))
        set_rng_state(torch.load(last / "rng.pt", weights_only=False))
        fields_ = {k: v for k, v in saved.items() if k in RunState.__dataclass_fields__}
        self.state = RunState(**fields_)
        self.log(f"resumed from {last}: epoch {self.state.epoch + 1}, "
                 f"batch {self.state.batches_done}, step {self.state.global_step}")

    def save_adapter(self, name: str) -> Path:
        """Write an adapter folder (best/ or final/) atomically."""
        from vicap_utils.modeling import save_adapter

        model = self.peft_model()
        self.loaded.model = model
        extra = {"epoch": self.state.epoch, "val_CIDEr": self.state.best_cider,
                 "vocabulary": self.vocab_summary}
        with atomic_dir(self.out / name) as tmp:
            save_adapter(self.loaded, tmp, self.cfg.to_dict(), self.state.vocab_entries, extra)
        return self.out / name

    # ---- loop ----------------------------------------------------------------------------
    def _stop_for_nan(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            kept = (f"the last good checkpoint is in {self.out}/last"
                    if (self.out / "last").is_dir() else "no checkpoint had been written yet")
            raise VicapError(
                f"loss became {loss.item()} at step {self.state.global_step}; stopped, {kept} "
                "(try a lower train.lr, train.mixed_precision=no, or model.vision_fp32=true)")

    def train_epoch(self, epoch: int, bar) -> float:
        """One epoch (or its remainder after a resume); returns the mean training loss."""
        cfg = self.cfg.train
        self.model.train()
        self.loader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        skip = self.state.batches_done
        batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        save_every = cfg.save_every_steps
        for batch in batches:
            with self.accelerator.accumulate(self.model):
                logits = self.model(batch["image"], batch["input_ids"], batch["attention_mask"])
                loss = compute_loss(logits, batch["labels"], cfg.label_smoothing)
                self._stop_for_nan(loss)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and cfg.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state.batches_done += 1
            self.state.loss_sum += loss.item()
            self.state.loss_count += 1
            if self.accelerator.sync_gradients:
                self.state.global_step += 1
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
                if save_every and self.state.global_step % save_every == 0:
                    self.save_last()
                if cfg.max_steps and self.state.global_step >= cfg.max_steps:
                    break
        return self.state.loss_sum / max(self.state.loss_count, 1)

    @torch.no_grad()
    def validate(self) -> tuple[float, float, dict[Any, str]]:
        """Validation loss (no smoothing) and CIDEr of beam-search captions."""
        from torch.utils.data import DataLoader

        from vicap_utils.batches import collate
        from vicap_utils.predict import Decoding, caption_batch

        model = self.peft_model()
        model.eval()
        total, count = 0.0, 0
        for batch in DataLoader(self.val_ds, batch_size=self.cfg.eval.batch_size,
                                collate_fn=collate):
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                logits = forward_logits(model, self.family, batch, self.cached)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += compute_loss(logits, batch["labels"], 0.0).item() * n
            count += n
        ids = sorted(self.data.val.images, key=str)
        rows = self.val_rows
        dec = Decoding(num_beams=self.cfg.eval.num_beams,
                       max_new_tokens=self.cfg.eval.max_new_tokens,
                       repetition_penalty=self.cfg.eval.repetition_penalty)
        self.loaded.model = model
        preds: dict[Any, str] = {}
        bs = self.cfg.eval.batch_size
        for start in range(0, len(ids), bs):
            chunk = ids[start:start + bs]
            srcs = torch.stack([self.val_src(rows[i]) for i in chunk]).to(self.accelerator.device)
            source = {"image_embeds" if self.cached else "pixel_values": srcs}
            with self.accelerator.autocast():
                out = caption_batch(self.loaded, dec=dec, **source)
            preds.update({i: alts[0][0] for i, alts in zip(chunk, out)})
        refs = self.data.val.captions_by_image()
        return total / max(count, 1), quick_cider(preds, refs), preds

    def run(self) -> dict[str, Any]:
        """Train to the end (or early stop), keeping best/, last/ and final/ current."""
        from vicap_utils.progress import progress as tqdm

        self.setup()
        cfg = self.cfg.train
        if self.state.finished and (self.out / "final").is_dir():
            if self.state.stop or self.state.epoch >= cfg.epochs:
                self.log(f"{self.out}: this run already finished (raise train.epochs to go on)")
                return self.summary()
            self.log(f"continuing the finished run from epoch {self.state.epoch} to {cfg.epochs}")
            self.state.finished = False
        total = self.steps_per_epoch * cfg.epochs
        bar = tqdm(total=min(total, cfg.max_steps) if cfg.max_steps else total,
                   initial=self.state.global_step, desc="training", unit="step",
                   disable=not self.main)
        try:
            while self.state.epoch < cfg.epochs and not self.state.stop:
                epoch = self.state.epoch
                start = time.time()
                train_loss = self.train_epoch(epoch, bar)
                hit_max = bool(cfg.max_steps and self.state.global_step >= cfg.max_steps)
                self._end_epoch(epoch, train_loss, start, hit_max)
        except torch.cuda.OutOfMemoryError:
            raise VicapError(
                f"CUDA out of memory (last good checkpoint in {self.out}/last); try a smaller "
                "train.batch_size with more train.grad_accum, model.load_in_8bit=true, or "
                "model.gradient_checkpointing=true") from None
        finally:
            bar.close()
        self.accelerator.wait_for_everyone()
        if self.main:
            self.save_adapter("final")
        self.state.finished = True
        self.save_last()
        if self.main:
            self.write_reports()
        self.accelerator.wait_for_everyone()
        return self.summary()

    def _end_epoch(self, epoch: int, train_loss: float, start: float, hit_max: bool) -> None:
        cfg = self.cfg.train
        validate = (epoch + 1) % max(cfg.val_every, 1) == 0 or epoch + 1 == cfg.epochs or hit_max
        val_loss, cider = (self.validate()[:2] if validate else (float("nan"), float("nan")))
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5),
               "val_loss": round(val_loss, 5), "val_CIDEr": round(cider, 5),
               "seconds": round(time.time() - start, 2)}
        self.state.history.append(row)
        self.log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                 f"val CIDEr {cider:.3f}")
        self.state.epoch = epoch + 1
        self.state.batches_done, self.state.loss_sum, self.state.loss_count = 0, 0.0, 0
        if validate and cider > self.state.best_cider:
            self.state.best_cider, self.state.best_epoch = cider, epoch + 1
            self.state.bad_epochs = 0
            if self.main:
                self.save_adapter("best")
        elif validate:
            self.state.bad_epochs += 1
        if cfg.patience and self.state.bad_epochs >= cfg.patience:
            self.log(f"early stop: no better val CIDEr for {cfg.patience} validations "
                     f"(best {self.state.best_cider:.3f} at epoch {self.state.best_epoch})")
            self.state.stop = True
        if hit_max:
            self.state.stop = True
        self.save_last()
        if self.main:
            self.write_history()

    def write_history(self) -> None:
        """history.csv with the contract's columns."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(self.state.history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    def write_reports(self) -> None:
        """history.csv, loss_curve.png and summary.json."""
        from vicap_utils.viz import plot_history

        self.write_history()
        if self.state.history:
            plot_history(self.state.history, self.out / "loss_curve.png")
        atomic_write_json(self.out / "summary.json", self.summary())

    def summary(self) -> dict[str, Any]:
        """Where things went and the headline numbers."""
        return {"out": str(self.out), "epochs_run": self.state.epoch,
                "best_epoch": self.state.best_epoch, "best_val_CIDEr": self.state.best_cider,
                "global_step": self.state.global_step, "vocabulary": self.vocab_summary,
                "trainable": self.trainable,
                "best": str(self.out / "best"), "final": str(self.out / "final")}


def train(cfg: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          log=print) -> dict[str, Any]:
    """Run a training job (the Python face of `vicap train`)."""
    return Trainer(cfg, out_dir, resume=resume, overwrite=overwrite, log=log).run()


def train_notebook(cfg: Config, out_dir: str | Path, num_processes: int = 2, **kwargs) -> None:
    """Launch `train` on several GPUs from a notebook (Kaggle T4×2) via notebook_launcher."""
    from accelerate import notebook_launcher

    notebook_launcher(train, (cfg, out_dir), num_processes=num_processes, **kwargs)


def cli_train(args) -> int:
    """`vicap train (--profile NAME | --config FILE) [--set k=v …] --out DIR [--resume]`."""
    cfg = load_config(args.profile, args.config, args.overrides)
    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"best val CIDEr {summary['best_val_CIDEr']:.3f} at epoch {summary['best_epoch']}; "
          f"adapters in {summary['best']} and {summary['final']}")
    return 0
