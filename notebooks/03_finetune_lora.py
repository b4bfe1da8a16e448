# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
PROFILE = "auto"  # "auto": VICAP_PROFILE, else the real profile on Kaggle with its data, else mini
OVERRIDES: list[str] = []  # `--set`-style settings, e.g. ["train.epochs=3", "train.lr=1e-4"]
OVERWRITE = True  # start the run folder afresh; False resumes an unfinished run from last/
HAND_STEPS = 60  # steps of the training loop written out below, before the full run

# %% [markdown]
# # 03 · Fine-tune BLIP with LoRA
#
# We freeze the base model and train small LoRA matrices in the text decoder's attention,
# plus the embedding rows of the Vietnamese vocabulary entries. First we take every step by
# hand — the tokenizer, the `LoraConfig`, one batch, the loss, a few dozen optimiser steps, a
# caption before and after — then hand over to the production trainer for the full run.
#
# **You will learn to**
# - explain why BLIP's English tokenizer cannot write Vietnamese, and what the vocabulary
#   extension changes;
# - read a `LoraConfig` and say which weights it trains and how many;
# - read one training batch: token ids, the `-100` labels the loss skips, the shift by one;
# - write the training loop yourself (zero_grad → forward → loss → backward → step) and see
#   the loss fall and the captions change.
#
# **Before you start:** notebook 01 (it prepares the data this notebook trains on); Python and
# a first look at PyTorch (tensors, `loss.backward()`).
#
# **Time:** `mini` on a 2-core laptop CPU: about 1.5 minutes
# (72 s measured: 60 hand-written steps, then 8 epochs before early stopping; see docs/teaching.md).
# `uitviic-blip` on a Kaggle T4: about 25–35 minutes for 30 epochs (estimate).

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch

from vicap_utils import captioner
from vicap_utils.builders import build_examples, build_loader, build_optimizer
from vicap_utils.prepare import prepare
from vicap_utils.teach import report
from vicap_utils.teach.exercises import (
    check_close,
    check_equal,
    lora_share,
    lora_target_count,
    stock_round_trip,
)
from vicap_utils.teach.notebook import (
    release,
    setup,
    vocabulary_table,
    wrote,
)
from vicap_utils.train import train_on_every_gpu

cfg, run = setup(PROFILE, OVERRIDES)
device = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## The resolved configuration
# The profile's settings with the overrides applied; training saves it as `config.json`, and
# `vicap train --config config.json` repeats the run exactly.

# %%
report.config_table(cfg.to_dict())

# %% [markdown]
# ## 1 · The base model and its tokenizer
# `load_base` loads the pre-trained captioner (for `mini`, a tiny BLIP that speaks English
# about synthetic sports scenes; for `uitviic-blip`, `Salesforce/blip-image-captioning-base`).
# We also load the data notebook 01 prepared: the audited, split captions.

# %%
cap = captioner.load_base(cfg.model)
data = prepare(cfg, cfg.data.prepared)
captions = [a.caption for a in data.train.annotations]
n_params = sum(p.numel() for p in cap.model.parameters())
print(f"{type(cap.model).__name__}: {n_params:,} parameters; {len(captions)} training captions")

# %% [markdown]
# BLIP-1's tokenizer is BERT's, lower-cased *and stripped of accents*: Vietnamese loses its
# diacritics, and "bóng" (ball), "bông" (cotton) and "bòng" become one word. Encode a caption
# and decode it back:

# %%
example = captions[0]
stock_ids = cap.tokenizer(example, add_special_tokens=False)["input_ids"]
print("caption:        ", example)
print("stock tokenizer:", cap.tokenizer.decode(stock_ids))

# %% [markdown]
# `extend_vocabulary` appends the missing syllables and every Vietnamese letter to the
# WordPiece vocabulary, and grows the model's embedding matrix by as many rows (each new row
# starts as the mean of its accent-stripped pieces, so "người" starts near "nguoi").

# %%
entries = captioner.extend_vocabulary(cap, captions)
extended_ids = cap.tokenizer(example, add_special_tokens=False)["input_ids"]
print(f"+{len(entries)} vocabulary entries, e.g. {entries[:8]}")
print("extended:       ", cap.tokenizer.decode(extended_ids))
print(f"tokens: {len(stock_ids)} (stock) → {len(extended_ids)} (extended)")

# %% [markdown]
# ## 2 · The LoRA adapter
# LoRA freezes every weight `W` of the base and learns a low-rank update `B·A` (rank `r`) for
# a few chosen layers: the decoder's self-attention query, key and value. The new vocabulary
# rows are trained too (`trainable_token_indices`). `task_type` stays unset: peft's task
# wrappers break BLIP's forward.

# %%
lora = captioner.lora_config(cap, cfg.lora)
print(f"r={lora.r}, lora_alpha={lora.lora_alpha}, lora_dropout={lora.lora_dropout}")
print(f"target_modules={lora.target_modules!r}")
new_rows = sum(len(rows) for rows in (lora.trainable_token_indices or {}).values())
print(f"trainable_token_indices: {new_rows} new vocabulary rows")
torch.manual_seed(cfg.train.seed)  # the same LoRA start (and dropout) as your neighbour's
model = captioner.add_lora(cap, lora)
model.print_trainable_parameters()
pd.DataFrame(captioner.trainable_table(model)).set_index("part")

# %% [markdown]
# ## 3 · One batch
# Every caption is tokenised once; each image comes as pixels or, since the vision encoder is
# frozen, as its vision features computed once. Here is one batch and its shapes:

# %%
captioner.place(cap, device)
examples = build_examples(cfg, cap, data)
loader, _ = build_loader(cfg, examples.train)
batch = next(iter(loader))
for name, tensor in batch.items():
    print(f"{name:>15}: {tuple(tensor.shape)} {tensor.dtype}")

# %% [markdown]
# The first caption of the batch, position by position. The input starts with `[DEC]`, as
# `generate()` does; each position is trained to predict the *next* token, and the positions
# whose target is `-100` (the padding after `[SEP]`) do not count in the loss.

# %%
report.label_table(cap.tokenizer, batch["input_ids"][0], batch["labels"][0],
                   batch["attention_mask"][0])

# %% [markdown]
# ## 4 · Forward pass and loss, by hand
# The forward pass gives one score per vocabulary entry at every position (the logits). The
# loss is the cross-entropy between position `t`'s scores and the token at `t + 1`, averaged
# over the positions whose label is not `-100`.

# %%
batch = {k: v.to(device) for k, v in batch.items()}
logits = captioner.forward(model, cap.family, batch["image"], batch["input_ids"],
                           batch["attention_mask"], cached=examples.cached)
print("logits:", tuple(logits.shape), "= (batch, positions, vocabulary)")
scores = logits[:, :-1, :].reshape(-1, logits.size(-1))  # position t …
targets = batch["labels"][:, 1:].reshape(-1)  # … predicts the label at t + 1
by_hand = torch.nn.functional.cross_entropy(scores, targets, ignore_index=-100)
print(f"loss by hand: {by_hand.item():.4f}; captioner.loss: "
      f"{captioner.loss(logits, batch['labels']).item():.4f}")

# %% [markdown]
# ## 5 · A caption before training
# `generate` starts from `[DEC]` and decodes with beam search. The base model has never seen
# Vietnamese, so expect English (or nonsense).

# %%
val_ids, val_images = next(examples.val_images(1))
before = captioner.caption(cap, **{examples.image_kind: val_images.to(device)})[0][0][0]
print(f"image {val_ids[0]} before: {before}")
print("references:", data.val.captions_by_image()[val_ids[0]][:2])

# %% [markdown]
# ## 6 · The training loop, written out
# Each step: clear the gradients, run the forward pass, compute the loss, back-propagate, and
# let AdamW update the LoRA matrices and the new rows (the learning rate warms up, then
# decays). Only the trainable parameters get gradients.

# %%
optimizer, scheduler = build_optimizer(cfg, model, total_steps=HAND_STEPS)
model.train()
losses = []
step = 0
while step < HAND_STEPS:
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer.zero_grad()
        logits = captioner.forward(model, cap.family, batch["image"], batch["input_ids"],
                                   batch["attention_mask"], cached=examples.cached)
        loss = captioner.loss(logits, batch["labels"], cfg.train.label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        step += 1
        if step == HAND_STEPS:
            break
model.eval()
first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
print(f"loss over the first 5 steps {first:.3f} → the last 5 {last:.3f}")
plt.figure(figsize=(6, 3))
plt.plot(losses)
plt.xlabel("step")
plt.ylabel("training loss")
plt.grid(alpha=0.3)

# %% [markdown]
# The same image after these few dozen steps:

# %%
after = captioner.caption(cap, **{examples.image_kind: val_images.to(device)})[0][0][0]
print(f"image {val_ids[0]} before: {before}\n{' ' * len(str(val_ids[0]))}       after:  {after}")

# %% [markdown]
# ## 7 · The full run, by the production trainer
# The trainer runs the same loop, and adds what a real run needs: checkpoints that a killed
# session resumes from (`last/`), validation CIDEr after each epoch with the best adapter kept
# (`best/`), early stopping, mixed precision on a GPU, and every GPU there is (on Kaggle's
# T4 x2, one worker process per GPU). It builds its own model from the same settings, so we
# release ours first: the model, the optimiser and its schedule, the batches, and every output
# that still holds the autograd graph (`logits`, `scores`, `by_hand`, `loss`), which keeps the
# base weights alive on the GPU. With `OVERWRITE = False` it resumes an unfinished run: the one
# in the run folder, or the one a previous Kaggle session left (attach that notebook's output
# as input).

# %%
release(globals(), "model", "cap", "optimizer", "scheduler", "loader", "examples", "batch",
        "val_images", "logits", "scores", "targets", "by_hand", "loss")
summary = train_on_every_gpu(cfg, run, resume=not OVERWRITE, overwrite=OVERWRITE)

# %% [markdown]
# ## What was trained
# Trainable parameters per part of the model, as training counted them, and how the training
# captions fared with the stock tokenizer ("before") and the extended one ("after").

# %%
pd.DataFrame(summary["trainable"]).set_index("part")

# %%
vocabulary_table(summary["vocabulary"])

# %% [markdown]
# ## Learning curves
# Training and validation loss per epoch, and validation CIDEr with the best epoch marked.

# %%
history = pd.read_csv(run / "history.csv")
fig = report.plot_history(history.to_dict("records"))
history.round(4)

# %%
print(f"best epoch {summary['best_epoch']} (val CIDEr {summary['best_val_CIDEr']:.3f}) "
      f"of {summary['epochs_run']}; adapter in {summary['best']}")

# %% [markdown]
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · Without the extension.** With `model.extend_vocab=false` the model keeps BERT's
# tokenizer. Load a fresh base (`captioner.load_base(cfg.model)`), encode `example` with its
# tokenizer and decode it back (`add_special_tokens=False`): what comes back? Put the decoded
# text in `DECODED_STOCK`.

# %%
DECODED_STOCK = None  # your answer: the decoded caption

# %%
check_equal("1 · without the extension", DECODED_STOCK, lambda: stock_round_trip(cfg, example),
            "the text the fresh base's own tokenizer gives back, not the extended one's")

# %% [markdown]
# **2 · Cross-attention too.** `lora.cross_attention=true` also adapts the decoder's
# cross-attention (where the text looks at the image). How many modules does LoRA wrap then?
# (Count the names that `captioner.lora_targets(...)` matches in the base model.)

# %%
N_TARGETS_CROSS = None  # your answer: the number of modules LoRA adapts with cross-attention

# %%
check_equal("2 · cross-attention", N_TARGETS_CROSS,
            lambda: lora_target_count(cfg, cross_attention=True),
            "module names of a fresh base that the pattern matches in full, with cross_attention "
            "on in the LoRA settings")

# %% [markdown]
# **3 · Rank and size.** Build the `LoraConfig` for rank 4 and for rank 32 (hint:
# `dataclasses.replace(cfg.lora, r=4)`, a fresh `captioner.load_base`, `extend_vocabulary`,
# `add_lora`) and read the trainable share of all parameters (`trainable_table`, row
# `"all"`, column `"share_%"`) for each, to two decimals.

# %%
SHARE_R4 = None  # your answer: the trainable share (%) with r=4
SHARE_R32 = None  # and with r=32

# %%
check_close("3 · rank 4", SHARE_R4, lambda: lora_share(cfg, 4, captions),
            "a percentage of all parameters (row 'all'), for a fresh base with the extended "
            "vocabulary and r=4", decimals=2)
check_close("3 · rank 32", SHARE_R32, lambda: lora_share(cfg, 32, captions),
            "the same with r=32", decimals=2)

# %% [markdown]
# **4 · Open.** Run section 6 again with ten times the learning rate
# (`cfg.train.lr *= 10` before `build_optimizer`). What happens to the loss curve, and to the
# caption after? Then try `HAND_STEPS = 5`: is the caption Vietnamese yet?

# %% [markdown]
# ## What this notebook wrote

# %%
print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
wrote([run / "best", run / "final", run / "last", run / "history.csv", run / "loss_curve.png",
       run / "config.json", run / "summary.json", run / "data" / "val.json"])
