"""LoRA fine-tuning on HF Accelerate: the loop, validation (loss, CIDEr of beam-search captions),
early stopping, the reports; a run resumed from `last/` ends with the same adapter."""

import contextlib
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object, set_seed
from torch.utils.data import DataLoader

from vicap_utils import builders, captioner, scst
from vicap_utils.builders import Examples
from vicap_utils.captioner import Captioner
from vicap_utils.config import Config, EvalConfig, load_config, save_config
from vicap_utils.dataset import collate, image_rows
from vicap_utils.metrics import quick_cider
from vicap_utils.ops.adapters import write_adapter
from vicap_utils.ops.checkpoint import RunState, load_last, open_run, rng_state, save_last
from vicap_utils.ops.folders import folder_lock, record
from vicap_utils.ops.handover import prepare_resume
from vicap_utils.ops.hardware import detect, plan_for
from vicap_utils.ops.io import VicapError, atomic_write_json, atomic_write_text, read_json
from vicap_utils.ops.launch import launch_training
from vicap_utils.ops.progress import progress
from vicap_utils.teach.report import plot_history

# How long a process waits for the others (NCCL's default: 10 min): the main process auditing
# every image, one T4 caching Flickr8k's features through BLIP-2's ViT-g (~9-15 min).
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_CIDEr", "seconds"]
Autocast = Callable[[], contextlib.AbstractContextManager]


@torch.no_grad()
def validation_loss(cap: Captioner, examples: Examples, batch_size: int,
                    device: torch.device | str, autocast: Autocast) -> float:
    """Mean next-token loss (no label smoothing) over every validation caption token."""
    total, count = 0.0, 0
    for batch in DataLoader(examples.val, batch_size=batch_size, collate_fn=collate,
                            generator=torch.Generator()):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits = captioner.forward(cap.model, cap.family, batch["image"], batch["input_ids"],
                                       batch["attention_mask"], examples.cached)
        n = int((batch["labels"][:, 1:] != captioner.IGNORE).sum())
        total += captioner.loss(logits, batch["labels"]).item() * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def validate(cap: Captioner, examples: Examples, ev: EvalConfig,
             references: Mapping[Any, list[str]], device: torch.device | str,
             autocast: Autocast, sample: bool = True) -> tuple[float, float, dict[Any, str]]:
    """(loss, CIDEr, captions by image id) of the per-epoch sample of validation images (all of
    them with `sample=False`)."""
    cap.model.eval()
    loss = validation_loss(cap, examples, ev.batch_size, device, autocast)
    dec, preds = captioner.Decoding.from_eval(ev), {}
    for ids, images in examples.val_images(ev.batch_size, sample):
        with autocast():
            out = captioner.caption(cap, dec=dec, **{examples.image_kind: images.to(device)})
        preds.update(zip(ids, (alts[0][0] for alts in out)))
    return loss, quick_cider(preds, references), preds


class Trainer:
    """One training run: build the parts, train, validate, checkpoint, resume."""

    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False,
                 overwrite: bool = False, log=print, scst_from: str | Path | None = None) -> None:
        """Check the run folder, then build data, captioner, examples, loader and optimiser."""
        self.cfg, self.out, self.log = cfg, Path(out_dir), log
        t = cfg.train
        hardware = plan_for(cfg).check()  # an unusable GPU or a real profile on a CPU: stop now
        self.accelerator = Accelerator(
            mixed_precision=hardware.accelerate_precision, gradient_accumulation_steps=t.grad_accum,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)])
        self.main = self.accelerator.is_main_process
        entries = scst.adapter_entries(cfg, scst_from) if scst_from else None
        with self.accelerator.main_process_first():  # the writer claims (and clears) it first
            saved = open_run(self.out, cfg, resume, overwrite, writer=self.main)
        if not self.main:
            self.log = lambda *args, **kwargs: None
        if saved and bool(saved.scst_from) != bool(scst_from):
            raise VicapError(f"{self.out}: cannot resume with a different --scst-from; the run "
                             f"started from {saved.scst_from or 'cross-entropy alone'}")
        entries = saved.vocab_entries if saved else entries
        self.log(hardware.line())
        for notice in hardware.notices:
            self.log(f"notice: {notice}")
        set_seed(t.seed)
        if self.main:
            save_config(cfg, self.out / "config.json")
        with self.accelerator.main_process_first():
            self.data = builders.build_data(cfg, self.out, self.log)
        self.cap, entries, self.vocab_report = builders.build_captioner(
            cfg, self.data, entries, hardware.load_in_8bit, self.accelerator.local_process_index,
            self.log)
        captioner.place(self.cap, self.accelerator.device)
        self.examples = builders.build_examples(cfg, self.cap, self.data, self.main, self.log,
                                                self.out / "cache")  # each process a share
        self.scst = None
        if scst_from:  # its LoRA weights: cached ViT features never depend on them
            scst.load_adapter(self.cap, scst_from)
            ids, _ = image_rows(self.data.train)
            refs = self.data.train.captions_by_image()
            self.scst = scst.Scst(self.cap, [refs[i] for i in ids], cfg.scst,
                                  self.examples.image_kind)
            images = partial(scst.image_batch, self.examples.train.image_source)  # per image
            loader, self.sampler = builders.build_loader(cfg, range(len(ids)), 0, images)
        else:
            workers = builders.loader_workers(cfg, self.examples.cached)
            loader, self.sampler = builders.build_loader(cfg, self.examples.train, workers)
        processes = self.accelerator.num_processes
        steps = math.ceil(math.ceil(len(loader) / processes) / t.grad_accum) * t.epochs
        self.total_steps = min(steps, t.max_steps or steps)  # each process's, up to max_steps
        optimizer, scheduler = builders.build_optimizer(cfg, self.cap.model, self.total_steps,
                                                        processes)
        forward = captioner.TrainingForward(self.cap.model, self.cap.family, self.examples.cached)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            forward, optimizer, loader, scheduler)
        self.state = saved or RunState(vocab_entries=entries, config=asdict(cfg),
                                       scst_from=str(scst_from or ""))
        self.scaler = torch.amp.GradScaler(self.accelerator.device.type,  # driven in `step`
                                           enabled=hardware.mixed_precision == "fp16")
        self.autocast = (partial(torch.autocast, self.accelerator.device.type, torch.float16)
                         if self.scaler.is_enabled() else self.accelerator.autocast)  # bf16, no
        if saved:
            load_last(self.out, self.cap.model, self.optimizer, self.scheduler, self.scaler,
                      self.accelerator.process_index)
            self.log(f"resumed from {self.out / 'last'}: epoch {self.state.epoch + 1}, "
                     f"batch {self.state.batches_done}, step {self.state.global_step}")

    def train_epoch(self, bar) -> None:
        """One epoch (or what is left of it after a resume), then its checkpoint with the epoch
        pending validation: a failing validation never costs it."""
        t, state, start = self.cfg.train, self.state, time.time()
        self.model.train()
        self.loader.set_epoch(state.epoch)
        self.sampler.set_epoch(state.epoch)
        skip = state.batches_done
        batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        for batch in batches:
            with self.accelerator.accumulate(self.model):
                with self.autocast():
                    loss = self.batch_loss(batch)
                if not torch.isfinite(loss):
                    self.stop_on(loss)
                self.accelerator.backward(self.scaler.scale(loss))  # unchanged without fp16
                if self.accelerator.sync_gradients:
                    self.step()
                self.optimizer.zero_grad(set_to_none=True)
            state.batches_done += 1
            state.loss_sum += loss.item()
            if self.accelerator.sync_gradients:
                state.global_step += 1
                bar.update()
                bar.set_postfix(epoch=state.epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
                if t.save_every_steps and state.global_step % t.save_every_steps == 0:
                    self.save_last()
                if t.max_steps and state.global_step >= t.max_steps:
                    break
        state.pending = {"train_loss": state.loss_sum / max(state.batches_done, 1),
                         "seconds": time.time() - start,
                         "hit_max": bool(t.max_steps and state.global_step >= t.max_steps)}
        state.epoch += 1
        state.batches_done, state.loss_sum = 0, 0.0
        self.save_last()

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the batch's captions, or (SCST) the self-critical loss of its images."""
        if self.scst:
            return self.scst(self.model, batch)
        logits = self.model(batch["image"], batch["input_ids"], batch["attention_mask"])
        return captioner.loss(logits, batch["labels"], self.cfg.train.label_smoothing)

    def stop_on(self, loss: torch.Tensor) -> None:
        """Stop a run whose loss is no longer finite, saying where its last checkpoint is."""
        kept = (f"the last good checkpoint is in {self.out}/last"
                if (self.out / "last").is_dir() else "no checkpoint had been written yet")
        raise VicapError(
            f"loss became {loss.item()} at step {self.state.global_step}; stopped, {kept} "
            "(try a lower train.lr, train.mixed_precision=no, or model.vision_fp32=true)")

    def step(self) -> None:
        """Clip, then step; under fp16 the GradScaler skips (and we count) an overflowing step
        (without fp16 it is disabled: each call passes through)."""
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < scale:  # the scale backs off only after an overflow
            self.state.skipped_steps += 1
            return
        self.scheduler.step()

    def validate(self, sample: bool = True) -> tuple[float, float, dict[Any, str]]:
        """Validation loss and CIDEr of the per-epoch sample of validation images, or all."""
        return validate(self.cap, self.examples, self.cfg.eval,
                        self.data.val.captions_by_image(), self.accelerator.device,
                        self.autocast, sample)

    def _train(self) -> dict[str, Any]:
        """The epochs left to train (or up to an early stop), then final/ and the reports."""
        t, state = self.cfg.train, self.state
        if state.finished:
            if state.stop or state.epoch >= t.epochs:
                self.log(f"{self.out}: this run already finished (raise train.epochs to go on)")
                return self.summary()
            self.log(f"continuing the finished run from epoch {state.epoch} to {t.epochs}")
            state.finished = False
        bar = progress(total=self.total_steps, initial=state.global_step, desc="training",
                       unit="step", disable=not self.main)
        try:
            if state.pending:  # a validation that an interruption cut short
                self.validate_epoch()
            while state.epoch < t.epochs and not state.stop:
                self.train_epoch(bar)
                self.validate_epoch()
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
        if self.examples.val_sample and not state.full_val:
            state.full_val = {"epoch": state.epoch, "val_CIDEr": self.validate(False)[1]}
            self.log(f"final model on all {len(self.examples.val_ids)} validation images: "
                     f"val CIDEr {state.full_val['val_CIDEr']:.3f}")
        state.finished = True
        self.save_last()
        if self.main:  # a finished run's reports
            self.write_history()
            record(self.out, ["loss_curve.png", "summary.json"])
            if state.history:
                plt.close(plot_history(state.history, self.out / "loss_curve.png"))
            atomic_write_json(self.out / "summary.json", self.summary())
        self.accelerator.wait_for_everyone()
        return self.summary()

    def validate_epoch(self) -> None:
        """Validate the pending epoch when due; record it, keep the best adapter, stop early."""
        t, state = self.cfg.train, self.state
        pending, epoch, start = state.pending, state.epoch, time.time()
        due = epoch % t.val_every == 0 or epoch == t.epochs or pending["hit_max"]
        val_loss, cider = self.validate()[:2] if due else (float("nan"), float("nan"))
        state.history.append({
            "epoch": epoch, "train_loss": round(pending["train_loss"], 5),
            "val_loss": round(val_loss, 5), "val_CIDEr": round(cider, 5),
            "seconds": round(pending["seconds"] + time.time() - start, 2)})
        skipped = (f"; {state.skipped_steps} overflowing fp16 steps skipped so far"
                   if state.skipped_steps else "")
        self.log(f"epoch {epoch}: train loss {pending['train_loss']:.4f}, val loss "
                 f"{val_loss:.4f}, val CIDEr {cider:.3f}{skipped}")
        if due and cider > state.best_cider:
            state.best_cider, state.best_epoch, state.bad_epochs = cider, epoch, 0
            if self.main:
                self.save_adapter("best")
        elif due:
            state.bad_epochs += 1
        if t.patience and state.bad_epochs >= t.patience:
            self.log(f"early stop: no better val CIDEr for {t.patience} validations "
                     f"(best {state.best_cider:.3f} at epoch {state.best_epoch})")
            state.stop = True
        state.stop = state.stop or pending["hit_max"]
        state.pending = {}
        self.save_last()
        if self.main:
            self.write_history()

    def save_last(self) -> None:
        """Write last/ (main process, once every process got here and sent its RNG state)."""
        rng_states = gather_object([rng_state()])
        if self.main:
            save_last(self.out, self.cap.model, self.optimizer, self.scheduler, self.scaler,
                      self.state, rng_states)

    def save_adapter(self, name: str) -> None:
        """Write an adapter folder (best/ or final/) atomically."""
        record(self.out, [name])
        write_adapter(self.cap, self.out / name, asdict(self.cfg), self.state.vocab_entries,
                      {"epoch": self.state.epoch, "val_CIDEr": self.state.best_cider,
                       "vocabulary": self.vocab_report})

    def write_history(self) -> None:
        """history.csv, one row per epoch."""
        table = pd.DataFrame(self.state.history, columns=HISTORY_FIELDS)
        record(self.out, ["history.csv"])
        atomic_write_text(self.out / "history.csv", table.to_csv(index=False, na_rep="nan"))

    def summary(self) -> dict[str, Any]:
        """Where things went and the headline numbers (summary.json)."""
        state, out = self.state, self.out
        return {"out": str(out), "epochs_run": state.epoch, "best_epoch": state.best_epoch,
                "best_val_CIDEr": state.best_cider, "global_step": state.global_step,
                "skipped_steps": state.skipped_steps, "vocabulary": self.vocab_report,
                "trainable": captioner.trainable_table(self.cap.model),
                "full_val": state.full_val, "best": str(out / "best"),
                "final": str(out / "final")}


def train(cfg: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          log=print, scst_from: str | Path | None = None) -> dict[str, Any]:
    """`vicap train` from Python (`scst_from`: SCST from that adapter); `resume` first brings back
    a previous Kaggle session's run when `out_dir` holds none. The main process holds the lock."""
    cfg = scst.training_config(cfg) if scst_from else cfg
    plan_for(cfg).check()  # the hardware, then the settings the base bounds: before any write
    captioner.check_against_base(cfg)
    main = os.environ.get("RANK", "0") == "0"  # torch.distributed.run's main process, or alone
    if resume and main:
        prepare_resume(out_dir, cfg.profile)
    with folder_lock(out_dir) if main else contextlib.nullcontext():
        return Trainer(cfg, out_dir, resume, overwrite, log, scst_from)._train()


def train_on_every_gpu(cfg: Config, run: str | Path, resume: bool = False,
                       overwrite: bool = False) -> dict[str, Any]:
    """Train from a notebook here (one GPU or CPU), else one `vicap train` per GPU; returns the
    summary. A `resume` with nothing to resume starts a fresh run."""
    resume = resume and prepare_resume(run, cfg.profile) is not None
    gpus = detect().count
    if gpus <= 1:
        return train(cfg, run, resume=resume, overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="vicap-launch-") as tmp:
        config = save_config(cfg, Path(tmp) / "config.json")
        flags = ["--resume"] if resume else ["--overwrite"] if overwrite else []
        launch_training(["--config", str(config), "--out", str(run), *flags], gpus)
    return read_json(Path(run) / "summary.json", "run summary")


def cli_train(args) -> int:
    """`vicap train (--profile NAME | --config FILE) [--set k=v …] --out DIR [--resume]`."""
    cfg = load_config(args.profile, args.config, args.overrides)
    try:
        summary = train(cfg, args.out, args.resume, args.overwrite, scst_from=args.scst_from)
    except KeyboardInterrupt:
        again = ["vicap", "train", *(["--profile", args.profile] if args.profile
                                     else ["--config", args.config])]
        again += [part for item in args.overrides for part in ("--set", item)]
        again += ["--scst-from", args.scst_from] if args.scst_from else []
        last = Path(args.out) / "last"
        print("vicap train: interrupted; " + (
            f"the last checkpoint is in {last}. Resume with: "
            f"{shlex.join([*again, '--out', str(args.out), '--resume'])}" if last.is_dir() else
            "no checkpoint was written yet: run the same command again (add --overwrite if it "
            "asks)"), file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"best val CIDEr {summary['best_val_CIDEr']:.3f} at epoch "
              f"{summary['best_epoch']}; adapters in {summary['best']} and {summary['final']}")
    return 0
