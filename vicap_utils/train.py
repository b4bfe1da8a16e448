"""LoRA fine-tuning on HF Accelerate: the training loop, validation and early stopping.

`builders` makes the parts (data, captioner, examples, optimiser); `checkpoint` keeps the run
folder (its rules, the resumable `last/`, the history). The data order is a function of
(seed, epoch), so a run killed at any moment and resumed ends with the same adapter. fp16 is
driven here, the same on a GPU and on the CPU (`hardware.EMULATE_T4`): autocast and a
GradScaler whose skipped steps are counted; Accelerate gets bf16 or nothing.
"""
from __future__ import annotations

import math
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from vicap_utils import captioner
from vicap_utils.builders import (
    build_captioner,
    build_data,
    build_examples,
    build_loader,
    build_optimizer,
    loader_workers,
    optimizer_steps,
)
from vicap_utils.config import Config, load_config, save_config
from vicap_utils.ops.checkpoint import (
    RunState,
    load_last,
    open_run,
    rng_state,
    save_last,
    write_history,
    write_reports,
)
from vicap_utils.ops.folders import record
from vicap_utils.ops.io import VicapError
from vicap_utils.ops.progress import progress

# How long a process may wait in a barrier for the others (default: 10 min with NCCL). The
# longest waits: the main process preparing the data (auditing every image, minutes at first
# use), and the feature cache (shared out by `features.encode_images`); even one T4 alone
# pushing Flickr8k's 8,091 images through BLIP-2's ViT-g in fp32 is ~9-15 min by arithmetic.
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)


class Trainer:
    """One training run: build the parts, train, validate, checkpoint, resume."""

    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False,
                 overwrite: bool = False, log=print) -> None:
        self.cfg, self.out, self.log = cfg, Path(out_dir), log
        self.resume, self.overwrite = resume, overwrite
        self.state = RunState()
        self.scaler: torch.amp.GradScaler | None = None

    def setup(self) -> None:
        """Check the run folder, then build data, captioner, examples, loader and optimiser."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        from vicap_utils.ops.hardware import plan_for

        cfg, t = self.cfg, self.cfg.train
        hardware = plan_for(cfg).check()  # an unusable GPU or a real profile on a CPU: stop now
        self.accelerator = Accelerator(
            mixed_precision=hardware.accelerate_precision, gradient_accumulation_steps=t.grad_accum,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)])
        self.main = self.accelerator.is_main_process
        if self.main:  # the writer claims the folder (and clears it with --overwrite) first
            saved = open_run(self.out, cfg, self.resume, self.overwrite)
        self.accelerator.wait_for_everyone()
        if not self.main:
            saved = open_run(self.out, cfg, self.resume, self.overwrite, writer=False)
        if not self.main:
            self.log = lambda *args, **kwargs: None
        self.log(hardware.line())
        for notice in hardware.notices:
            self.log(f"notice: {notice}")
        set_seed(t.seed)
        if self.main:
            save_config(cfg, self.out / "config.json")
        with self.accelerator.main_process_first():
            self.data = build_data(cfg, self.out, self.log)
        self.cap, entries, self.vocab_report = build_captioner(
            cfg, self.data, saved.vocab_entries if saved else None, hardware.load_in_8bit,
            self.accelerator.local_process_index, self.log)
        captioner.place(self.cap, self.accelerator.device)
        self.examples = build_examples(cfg, self.cap, self.data, self.main, self.log,
                                       self.out / "cache")  # every process encodes a share
        loader, self.sampler = build_loader(cfg, self.examples.train,
                                            loader_workers(cfg, self.examples.cached))
        processes = self.accelerator.num_processes
        optimizer, scheduler = build_optimizer(
            cfg, self.cap.model, optimizer_steps(cfg, len(loader), processes), processes)
        forward = captioner.TrainingForward(self.cap.model, self.cap.family, self.examples.cached)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            forward, optimizer, loader, scheduler)
        self.steps_per_epoch = math.ceil(len(self.loader) / t.grad_accum)
        self.state = saved or RunState(vocab_entries=entries, config=cfg.to_dict())
        if hardware.mixed_precision == "fp16":  # driven here on any device (`step`)
            self.scaler = torch.amp.GradScaler(self.accelerator.device.type)
        if saved:
            load_last(self.out, self.cap.model, self.optimizer, self.scheduler, self.scaler,
                      self.accelerator.process_index)
            self.log(f"resumed from {self.out / 'last'}: epoch {self.state.epoch + 1}, "
                     f"batch {self.state.batches_done}, step {self.state.global_step}")

    def autocast(self):
        """fp16 autocast where the trainer drives fp16 (with its GradScaler), else Accelerate's
        (bf16, or nothing)."""
        if self.scaler is None:
            return self.accelerator.autocast()
        return torch.autocast(self.accelerator.device.type, dtype=torch.float16)

    # ---- the loop ------------------------------------------------------------------------
    def train_epoch(self, epoch: int, bar) -> float:
        """One epoch (or what is left of it after a resume); returns the mean training loss."""
        t = self.cfg.train
        self.model.train()
        self.loader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        skip = self.state.batches_done
        batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        for batch in batches:
            with self.accelerator.accumulate(self.model):
                with self.autocast():
                    logits = self.model(batch["image"], batch["input_ids"],
                                        batch["attention_mask"])
                    loss = captioner.loss(logits, batch["labels"], t.label_smoothing)
                self._stop_if_not_finite(loss)
                self.accelerator.backward(self.scaler.scale(loss) if self.scaler else loss)
                if self.accelerator.sync_gradients:
                    self.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state.batches_done += 1
            self.state.loss_sum += loss.item()
            self.state.loss_count += 1
            if self.accelerator.sync_gradients:
                self.state.global_step += 1
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
                if t.save_every_steps and self.state.global_step % t.save_every_steps == 0:
                    self.save_last()
                if t.max_steps and self.state.global_step >= t.max_steps:
                    break
        return self.state.loss_sum / max(self.state.loss_count, 1)

    def step(self) -> None:
        """Clip and take the optimizer and schedule step. Under fp16 the GradScaler unscales
        first and skips a step whose gradients overflowed: counted in `skipped_steps`, the
        weights and the schedule left as they were."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.train.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # the scale backs off only after an overflow
                self.state.skipped_steps += 1
                return
        self.scheduler.step()

    def validate(self, sample: bool = True) -> tuple[float, float, dict[Any, str]]:
        """Validation loss and CIDEr (`validation.validate`) of the per-epoch sample of
        validation images, or of all of them."""
        from vicap_utils.validation import validate

        return validate(self.cap, self.examples, self.cfg.eval,
                        self.data.val.captions_by_image(), self.accelerator.device,
                        self.autocast, sample)

    def run(self) -> dict[str, Any]:
        """Train to the end (or an early stop), keeping last/, best/ and final/ current; the
        main process holds the run folder's lock throughout (one writer at a time)."""
        import contextlib
        import os

        from vicap_utils.ops.folders import folder_lock

        main = os.environ.get("RANK", "0") == "0"
        with folder_lock(self.out) if main else contextlib.nullcontext():
            self.setup()
            return self._train()

    def _train(self) -> dict[str, Any]:
        """The epochs left to train, then final/ and the reports."""
        t = self.cfg.train
        if self.state.finished:
            if self.state.stop or self.state.epoch >= t.epochs:
                self.log(f"{self.out}: this run already finished (raise train.epochs to go on)")
                return self.summary()
            self.log(f"continuing the finished run from epoch {self.state.epoch} to {t.epochs}")
            self.state.finished = False
        total = self.steps_per_epoch * t.epochs
        bar = progress(total=min(total, t.max_steps) if t.max_steps else total,
                       initial=self.state.global_step, desc="training", unit="step",
                       disable=not self.main)
        try:
            if self.state.pending:  # a validation that an interruption cut short
                self.validate_epoch()
            while self.state.epoch < t.epochs and not self.state.stop:
                start = time.time()
                train_loss = self.train_epoch(self.state.epoch, bar)
                self.end_epoch(train_loss, time.time() - start)
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
        if self.examples.val_sample and not self.state.full_val:
            self.state.full_val = {"epoch": self.state.epoch, "val_CIDEr": self.validate(False)[1]}
            self.log(f"final model on all {len(self.examples.val_ids)} validation images: "
                     f"val CIDEr {self.state.full_val['val_CIDEr']:.3f}")
        self.state.finished = True
        self.save_last()
        if self.main:
            write_reports(self.out, self.state.history, self.summary())
        self.accelerator.wait_for_everyone()
        return self.summary()

    def end_epoch(self, train_loss: float, seconds: float) -> None:
        """Checkpoint the trained epoch first (a failing validation never costs it), then
        validate it."""
        t = self.cfg.train
        self.state.epoch += 1
        self.state.batches_done, self.state.loss_sum, self.state.loss_count = 0, 0.0, 0
        hit_max = bool(t.max_steps and self.state.global_step >= t.max_steps)
        self.state.pending = {"train_loss": train_loss, "seconds": seconds, "hit_max": hit_max}
        self.save_last()
        self.validate_epoch()

    def validate_epoch(self) -> None:
        """Validate the pending epoch when due; record it, keep the best adapter, stop early."""
        t, p, epoch = self.cfg.train, self.state.pending, self.state.epoch
        start = time.time()
        due = epoch % t.val_every == 0 or epoch == t.epochs or p["hit_max"]
        val_loss, cider = self.validate()[:2] if due else (float("nan"), float("nan"))
        self.state.history.append({
            "epoch": epoch, "train_loss": round(p["train_loss"], 5), "val_loss": round(val_loss, 5),
            "val_CIDEr": round(cider, 5), "seconds": round(p["seconds"] + time.time() - start, 2)})
        skipped = (f"; {self.state.skipped_steps} overflowing fp16 steps skipped so far"
                   if self.state.skipped_steps else "")
        self.log(f"epoch {epoch}: train loss {p['train_loss']:.4f}, val loss {val_loss:.4f}, "
                 f"val CIDEr {cider:.3f}{skipped}")
        if due and cider > self.state.best_cider:
            self.state.best_cider, self.state.best_epoch, self.state.bad_epochs = cider, epoch, 0
            if self.main:
                self.save_adapter("best")
        elif due:
            self.state.bad_epochs += 1
        if t.patience and self.state.bad_epochs >= t.patience:
            self.log(f"early stop: no better val CIDEr for {t.patience} validations "
                     f"(best {self.state.best_cider:.3f} at epoch {self.state.best_epoch})")
            self.state.stop = True
        self.state.stop = self.state.stop or p["hit_max"]
        self.state.pending = {}
        self.save_last()
        if self.main:
            write_history(self.out, self.state.history)

    # ---- outputs -------------------------------------------------------------------------
    def _stop_if_not_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            kept = (f"the last good checkpoint is in {self.out}/last"
                    if (self.out / "last").is_dir() else "no checkpoint had been written yet")
            raise VicapError(
                f"loss became {loss.item()} at step {self.state.global_step}; stopped, {kept} "
                "(try a lower train.lr, train.mixed_precision=no, or model.vision_fp32=true)")

    def save_last(self) -> None:
        """Write last/ (main process, once every process got here and sent its RNG state)."""
        from accelerate.utils import gather_object

        rng_states = gather_object([rng_state()])
        if self.main:
            save_last(self.out, self.cap.model, self.optimizer, self.scheduler, self.scaler,
                      self.state, rng_states)

    def save_adapter(self, name: str) -> None:
        """Write an adapter folder (best/ or final/) atomically."""
        from vicap_utils.ops.adapters import write_adapter

        record(self.out, [name])
        write_adapter(self.cap, self.out / name, self.cfg.to_dict(), self.state.vocab_entries,
                      {"epoch": self.state.epoch, "val_CIDEr": self.state.best_cider,
                       "vocabulary": self.vocab_report})

    def summary(self) -> dict[str, Any]:
        """Where things went and the headline numbers (`checkpoint.run_summary`)."""
        from vicap_utils.ops.checkpoint import run_summary

        return run_summary(self.out, self.state, self.vocab_report, self.cap.model)


def train(cfg: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          log=print) -> dict[str, Any]:
    """Run a training job (the Python face of `vicap train`)."""
    return Trainer(cfg, out_dir, resume=resume, overwrite=overwrite, log=log).run()


def cli_train(args) -> int:
    """`vicap train (--profile NAME | --config FILE) [--set k=v …] --out DIR [--resume]`."""
    import os

    from vicap_utils.ops.handover import prepare_resume

    cfg = load_config(args.profile, args.config, args.overrides)
    if args.resume:  # a previous Kaggle session's run, attached as input, is copied back first
        prepare_resume(args.out, cfg.profile)
    try:
        summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        again = ["vicap", "train", *(["--profile", args.profile] if args.profile
                                     else ["--config", args.config])]
        again += [part for item in args.overrides for part in ("--set", item)]
        print(f"vicap train: interrupted; the last checkpoint is in {Path(args.out) / 'last'}. "
              f"Resume with: {shlex.join([*again, '--out', str(args.out), '--resume'])}",
              file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"best val CIDEr {summary['best_val_CIDEr']:.3f} at epoch "
              f"{summary['best_epoch']}; adapters in {summary['best']} and {summary['final']}")
    return 0
