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
VAL_CAPTIONS = 256  # the fixed validation sample the hand-written loop reports its loss on

# %% [markdown]
# # 03 · Fine-tune BLIP with LoRA
#
# We freeze the base model and train small LoRA matrices in the text decoder's attention,
# plus the embedding rows of the Vietnamese vocabulary entries. First we take every step by
# hand — the tokenizer, a LoRA layer written from scratch and then peft's, the `-100` labels,
# the loss, a greedy decoder, a few dozen optimiser steps with a validation loss before and
# after — then hand over to the production trainer for the full run.
#
# **You will learn to**
# - explain why BLIP's English tokenizer cannot write Vietnamese, and what the vocabulary
#   extension changes;
# - write a LoRA layer yourself (frozen `W`, trainable `A` and `B`, scaling `alpha / r`),
#   check it against peft's, and read a `LoraConfig`;
# - build the `-100` labels of a batch and say which positions the loss skips;
# - write greedy decoding and the training loop yourself (zero_grad → forward → loss →
#   backward → step) and judge a change by the validation loss.
#
# **Before you start:** notebook 01 (it prepares the data this notebook trains on); Python and
# a first look at PyTorch (tensors, `loss.backward()`).
#
# **Time:** `mini` on a 2-core laptop CPU: about 1.5 minutes
# (79 s measured: 60 hand-written steps, then 8 epochs before early stopping; see docs/teaching.md).
# `uitviic-blip` on a Kaggle T4: about 25–35 minutes for 30 epochs (estimate).
#
# **Run a section again from its first cell.** Each section rebuilds what it changes (a fresh
# copy of the base model, the adapter's starting weights, the learning rate), so changing a
# setting and re-running a section gives the same result as running it once with that setting.

# %%
import copy
import json
import re
from contextlib import nullcontext
from dataclasses import asdict, replace

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display
from peft import LoraConfig
from torch.utils.data import Subset

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
from vicap_utils.teach.notebook import release, setup, wrote
from vicap_utils.train import train_on_every_gpu, validation_loss
from vicap_utils.vocab import encode_captions, special_ids

cfg, run = setup(PROFILE, OVERRIDES)
device = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## The resolved configuration
# The profile's settings with the overrides applied; training saves it as `config.json`, and
# `vicap train --config config.json` repeats the run exactly.

# %% tags=["config-table"]
pd.json_normalize(asdict(cfg), sep=".").T.map(repr).set_axis(["value"], axis=1)

# %% [markdown]
# ## 1 · The base model and its tokenizer
# `load_base` loads the pre-trained captioner (for `mini`, a tiny BLIP that speaks English
# about synthetic sports scenes; for `uitviic-blip`, `Salesforce/blip-image-captioning-base`).
# We also load the data notebook 01 prepared: the audited, split captions. `base` stays as
# loaded (plus the vocabulary below); the sections that change a model work on a copy of it.

# %%
base = captioner.load_base(cfg.model)
data = prepare(cfg, cfg.data.prepared)
captions = [a.caption for a in data.train.annotations]
n_params = sum(p.numel() for p in base.model.parameters())
print(f"{type(base.model).__name__}: {n_params:,} parameters; {len(captions)} training captions")

# %% [markdown]
# BLIP-1's tokenizer is BERT's, lower-cased *and stripped of accents*: Vietnamese loses its
# diacritics, and "bóng" (ball), "bông" (cotton) and "bòng" become one word. Encode a caption
# and decode it back:

# %%
example = captions[0]
stock_ids = base.tokenizer(example, add_special_tokens=False)["input_ids"]
print("caption:        ", example)
print("stock tokenizer:", base.tokenizer.decode(stock_ids))

# %% [markdown]
# `extend_vocabulary` appends the missing syllables and every Vietnamese letter to the
# WordPiece vocabulary, and grows the model's embedding matrix by as many rows (each new row
# starts as the mean of its accent-stripped pieces, so "người" starts near "nguoi").

# %%
entries = captioner.extend_vocabulary(base, captions)
extended_ids = base.tokenizer(example, add_special_tokens=False)["input_ids"]
print(f"+{len(entries)} vocabulary entries, e.g. {entries[:8]}")
print("extended:       ", base.tokenizer.decode(extended_ids))
print(f"tokens: {len(stock_ids)} (stock) → {len(extended_ids)} (extended)")

# %% [markdown]
# ## 2 · A LoRA layer, written by hand
# LoRA keeps a layer's weight `W` (`d_out × d_in`) frozen and learns a low-rank update:
# `h = W·x + (alpha / r)·B·A·x`, with `A` (`r × d_in`) and `B` (`d_out × r`). The rank `r` is
# small, so `A` and `B` hold far fewer numbers than `W`; `B` starts at zero, so training starts
# from the base model exactly. Here is the whole layer:

# %% tags=["lora-by-hand"]
class LoRALinear(torch.nn.Module):
    """A frozen linear layer W plus a trainable low-rank update: W·x + (alpha / r)·B·A·x."""

    def __init__(self, linear: torch.nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.linear = linear.requires_grad_(False)  # W and its bias: frozen
        self.A = torch.nn.Parameter(torch.randn(r, linear.in_features) / r ** 0.5)
        self.B = torch.nn.Parameter(torch.zeros(linear.out_features, r))  # zero: no change yet
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.scaling * (x.to(self.A.dtype) @ self.A.T @ self.B.T)  # A, B in fp32
        return (self.linear(x) + update).to(x.dtype)  # as peft adds it to an fp16 W·x


# %% [markdown]
# Wrap it around one attention layer of the base: the first of the layers LoRA adapts below
# (BLIP-1: the query projection of the text decoder's first self-attention block). Until `B`
# learns something, the wrapped layer gives exactly the frozen layer's output.

# %%
targets = captioner.lora_targets(base.family, cfg.lora)  # a regex over module names
name = next(n for n, m in base.model.named_modules()
            if isinstance(m, torch.nn.Linear) and re.fullmatch(targets, n))
query = base.model.get_submodule(name)
hand = LoRALinear(query, r=cfg.lora.r, alpha=cfg.lora.alpha).to(query.weight.device)
x = torch.randn(2, 5, query.in_features,  # hidden states: 2 captions × 5 positions
                dtype=base.model.dtype, device=query.weight.device)
print(name)
print(f"W {tuple(query.weight.shape)}: {query.weight.numel():,} numbers, frozen")
print(f"A {tuple(hand.A.shape)} + B {tuple(hand.B.shape)}: "
      f"{hand.A.numel() + hand.B.numel():,} numbers to train (r={cfg.lora.r})")
print("same output as W alone while B = 0:", torch.allclose(hand(x), query(x)))

# %% [markdown]
# ## 3 · The same with peft
# peft does this for every layer whose name matches `target_modules`, and can also train the
# embedding rows of the new vocabulary entries (`trainable_token_indices`). Here is the
# `LoraConfig` that `captioner.lora_config` builds for training, written out. `task_type`
# stays unset: a task such as `CAUSAL_LM` makes peft wrap the model for a text-only language
# model (it passes `input_ids` and `labels` its own way and prepares generation itself), while
# BLIP also needs the image; without it, peft only injects the LoRA layers and we call the
# model's parts ourselves. The cell starts from a fresh copy of `base`, because peft must not
# wrap a model twice: change `lora_settings` and run the section again.

# %%
cap = copy.deepcopy(base)  # a fresh copy at every run of this cell
lora_settings = cfg.lora  # exercise 4: replace(cfg.lora, r=4), or cross_attention=True
new_rows = list(range(cap.first_new_id, len(cap.tokenizer))) if cap.first_new_id else []
lora = LoraConfig(
    r=lora_settings.r,  # the rank of B·A
    lora_alpha=lora_settings.alpha,  # the update is scaled by alpha / r
    lora_dropout=lora_settings.dropout,  # dropout on x before A, while training
    target_modules=captioner.lora_targets(cap.family, lora_settings),  # a regex over names
    trainable_token_indices=({"word_embeddings": new_rows}
                             if new_rows and lora_settings.train_new_embeddings else None),
)
assert lora == captioner.lora_config(cap, lora_settings)  # the config training builds
print(f"r={lora.r}, lora_alpha={lora.lora_alpha}, lora_dropout={lora.lora_dropout}")
print(f"target_modules={lora.target_modules!r}")
print(f"trainable_token_indices: {len(new_rows)} new vocabulary rows")
torch.manual_seed(cfg.train.seed)  # the same LoRA start (and dropout) as your neighbour's
model = captioner.add_lora(cap, lora)  # freeze the base, then peft.get_peft_model
captioner.place(cap, device)
start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
model.print_trainable_parameters()
print(captioner.inner_model(model).get_submodule(name))  # peft's layer around the same W

# %%
pd.DataFrame(captioner.trainable_table(model)).set_index("part")

# %% [markdown]
# ## 4 · One batch and its `-100` labels
# The decoder reads `[DEC] caption [SEP]` and learns, at each position, the next token. The
# labels are the same ids, except where nothing is to be learnt: the start token, a prompt if
# the profile has one, and the padding get `-100`, which the loss skips. Two captions by hand:

# %%
bos, eos, pad = special_ids(cap.tokenizer)  # [DEC], [SEP], [PAD] for BLIP-1
prefix = captioner.image_prefix(cap)  # BLIP-2: a placeholder per image query; BLIP-1: none
prompt = cap.tokenizer(cfg.model.prompt, add_special_tokens=False)["input_ids"]
texts = captions[:2]
rows = [prefix + [bos] + (prompt + cap.tokenizer(t, add_special_tokens=False)["input_ids"])
        [:cfg.model.max_length - 2] + [eos] for t in texts]
width = max(len(row) for row in rows)
input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
labels = input_ids.masked_fill(attention_mask == 0, -100)  # padding: nothing to learn
labels[:, :len(prefix) + 1 + len(prompt)] = -100  # given, not predicted
print("input_ids:", input_ids, "labels:", labels, sep="\n")
print("the package builds the same:", torch.equal(labels, encode_captions(
    cap.tokenizer, texts, cfg.model.max_length, cfg.model.prompt, prefix)[2]))

# %% [markdown]
# `build_examples` does this for every caption once; each image comes as pixels or, since the
# vision encoder is frozen, as its vision features computed once. Here is one batch:

# %%
examples = build_examples(cfg, cap, data)
loader, _ = build_loader(cfg, examples.train)
batch = next(iter(loader))
for key, tensor in batch.items():
    print(f"{key:>15}: {tuple(tensor.shape)} {tensor.dtype}")

# %% [markdown]
# The first caption of the batch, position by position: each position is trained to predict
# the *next* token, and the positions whose target is `-100` do not count in the loss.

# %%
first_ids, first_labels = batch["input_ids"][0], batch["labels"][0]
rows = []
for pos in range(min(int(batch["attention_mask"][0].sum()), len(first_ids) - 1)):  # no padding
    target = int(first_labels[pos + 1])
    rows.append({"input": cap.tokenizer.convert_ids_to_tokens(int(first_ids[pos])),
                 "target": "-100 (ignored)" if target == -100
                 else cap.tokenizer.convert_ids_to_tokens(target)})
pd.DataFrame(rows).rename_axis("position")

# %% [markdown]
# ## 5 · Forward pass and loss, by hand
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
# ## 6 · Decoding, by hand
# Greedy decoding feeds the image and `[DEC]`, takes the most likely next token, appends it
# and repeats until `[SEP]` (or a length limit). `generate(num_beams=1, do_sample=False)` does
# the same, faster (it keeps the attention keys and values of earlier positions).

# %%
model.eval()  # no dropout while decoding
val_ids, val_images = next(examples.val_images(1))
val_images = val_images.to(device)

# %% tags=["greedy"]
ids = torch.tensor([prefix + [bos]], device=device)
with torch.no_grad(), torch.autocast(device, torch.float16, enabled=device == "cuda"):
    for _ in range(cfg.eval.max_new_tokens):  # generate() on a GPU runs in fp16 too
        logits = captioner.forward(model, cap.family, val_images, ids, torch.ones_like(ids),
                                   cached=examples.cached)
        next_id = logits[0, -1].argmax()  # the most likely next token
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        if next_id == eos:
            break
greedy = captioner.decode(cap.tokenizer, ids)[0]
generated = captioner.caption(cap, dec=captioner.Decoding(
    num_beams=1, max_new_tokens=cfg.eval.max_new_tokens), **{examples.image_kind: val_images})
print(f"greedy, by hand:       {greedy}\ngenerate(num_beams=1): {generated[0][0][0]}")
print("greedy by hand = generate(num_beams=1):", greedy == generated[0][0][0])

# %% [markdown]
# The captions below use the profile's beam search (`num_beams` in `eval`), which keeps the
# best few partial captions at each step. The base model has never seen Vietnamese, so
# expect English (or nonsense).

# %%
beams = captioner.Decoding.from_eval(cfg.eval)  # the profile's beam search
before = captioner.caption(cap, dec=beams, **{examples.image_kind: val_images})[0][0][0]
print(f"image {val_ids[0]} before: {before}")
print("references:", data.val.captions_by_image()[val_ids[0]][:2])

# %% [markdown]
# ## 7 · The training loop, written out
# Each step: clear the gradients, run the forward pass, compute the loss, back-propagate, and
# let AdamW update the LoRA matrices and the new rows (the learning rate warms up, then
# decays). Only the trainable parameters get gradients. The training loss alone flatters
# (the model has seen those captions), so we also measure the loss on a fixed sample of
# validation captions before and after, with the trainer's own `validation_loss`. The cell
# first puts the adapter back as section 3 built it, so running it again starts over.

# %%
model.load_state_dict(start, strict=False)  # the adapter's starting weights
torch.manual_seed(cfg.train.seed)  # the same dropout masks at every run
lr_factor = 1  # exercise 4: try 10
hand_cfg = replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * lr_factor))
optimizer, scheduler = build_optimizer(hand_cfg, model, total_steps=HAND_STEPS)
val_few = replace(examples, val=Subset(examples.val, range(min(VAL_CAPTIONS, len(examples.val)))))
model.eval()
val_before = validation_loss(cap, val_few, cfg.eval.batch_size, device, nullcontext)
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
val_after = validation_loss(cap, val_few, cfg.eval.batch_size, device, nullcontext)
first, last = sum(losses[:5]) / len(losses[:5]), sum(losses[-5:]) / len(losses[-5:])
print(f"loss over the first 5 steps {first:.3f} → the last 5 {last:.3f}")
print(f"validation loss ({len(val_few.val)} captions) before {val_before:.4f} → "
      f"after {val_after:.4f}")
plt.figure(figsize=(6, 3))
plt.plot(losses)
plt.xlabel("step")
plt.ylabel("training loss")
plt.grid(alpha=0.3)

# %% [markdown]
# ## 8 · After a few dozen steps
# The same image:

# %%
after = captioner.caption(cap, dec=beams, **{examples.image_kind: val_images})[0][0][0]
print(f"image {val_ids[0]} before: {before}\n{' ' * len(str(val_ids[0]))}       after:  {after}")

# %% [markdown]
# `B` is no longer zero. Copy peft's trained `A` and `B` into our `LoRALinear`, around the same
# frozen `W`, and compare the outputs: peft's layer computes exactly what we wrote in section 2
# (peft stores `A` as a `Linear(d_in → r)` and `B` as a `Linear(r → d_out)`, whose weights have
# our shapes; in `eval()` mode its dropout does nothing).

# %% tags=["lora-vs-peft"]
peft_layer = captioner.inner_model(model).get_submodule(name)
hand = LoRALinear(peft_layer.base_layer, r=lora.r, alpha=lora.lora_alpha).to(device)
with torch.no_grad():
    hand.A.copy_(peft_layer.lora_A["default"].weight)
    hand.B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(2, 5, hand.linear.in_features, device=device,
                    dtype=captioner.inner_model(model).dtype)
    same = torch.allclose(hand(x), peft_layer(x), atol=1e-5)
print(f"|B| = {hand.B.norm():.4f}; LoRALinear with peft's A and B gives peft's output: {same}")

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
# **4 · Open.** Change one thing at a time, run the sections it names again, and note the
# validation loss that section 7 prints: (a) `lr_factor = 10` in section 7: what happens to
# the loss curve, and to the caption after (section 8)? (b) `HAND_STEPS = 5` in the first
# cell, then sections 7 and 8: is the caption Vietnamese yet? (c) in section 3,
# `lora_settings = replace(cfg.lora, r=4)`, then `r=64`, then `cross_attention=True`, each
# followed by sections 3 to 8: which helps most within 60 steps, and why might the full run
# disagree?

# %% [markdown]
# ## ⏸ Stop here in a 90-minute class
# Everything above runs in class; everything below is the full training run (`mini` on a
# 2-core CPU: about a minute; `uitviic-blip` on a Kaggle T4: 25–35 minutes). Start it at the
# end of the class, or let Kaggle's **Save Version → Save & Run All** do it in the background:
# notebooks 04–06 need its adapter. "Run All" does not stop here.

# %% [markdown]
# ## 9 · The full run, by the production trainer
# The trainer runs the same loop, and adds what a real run needs: checkpoints that a killed
# session resumes from (`last/`), validation CIDEr after each epoch with the best adapter kept
# (`best/`), early stopping, mixed precision on a GPU, and every GPU there is (on Kaggle's
# T4 x2, one worker process per GPU). It builds its own model from the same settings, so we
# release ours first: the models, the optimiser and its schedule, the batches, and every
# tensor that still holds the autograd graph or sits on the GPU. With `OVERWRITE = False` it
# resumes an unfinished run: the one in the run folder, or the one a previous Kaggle session
# left (attach that notebook's output as input). To go back to the sections above afterwards,
# run them again from section 1.

# %%
release(globals(), "base", "model", "cap", "start", "optimizer", "scheduler", "loader",
        "examples", "val_few", "batch", "val_images", "logits", "scores", "targets", "by_hand",
        "loss", "query", "hand", "peft_layer", "x", "ids", "next_id")
summary = train_on_every_gpu(cfg, run, resume=not OVERWRITE, overwrite=OVERWRITE)

# %% [markdown]
# ## What was trained
# Trainable parameters per part of the model, as training counted them, and how the training
# captions fared with the stock tokenizer ("before") and the extended one ("after").

# %%
pd.DataFrame(summary["trainable"]).set_index("part")

# %%
vocabulary = summary["vocabulary"]
if vocabulary:  # only BLIP-1 extends it; BLIP-2's byte-level tokenizer writes every letter
    table = pd.DataFrame({k: vocabulary[k] for k in ("before", "after")}).T
    table = table.drop(columns="example", errors="ignore")
    table["added_entries"] = [0, vocabulary["added_entries"]]
else:
    table = pd.DataFrame({"note": ["vocabulary not extended for this profile"]})
display(table)

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
# ## What this notebook wrote

# %%
print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
wrote([run / "best", run / "final", run / "last", run / "history.csv", run / "loss_curve.png",
       run / "config.json", run / "summary.json", run / "data" / "val.json"])

# %% [markdown]
# ## Questionnaire
# Answer in a sentence or two; the solutions notebook has answers.
#
# 1. Why does BLIP's stock tokenizer turn "bóng" and "bông" into the same tokens, and what
#    does `extend_vocabulary` add to the model besides tokenizer entries?
# 2. In `LoRALinear`, which tensors are trained, what are their shapes, and why does `B`
#    start at zero?
# 3. How many numbers does LoRA with `r = 16` add to one 768 × 768 query matrix, and what
#    share of that matrix is it?
# 4. Which positions of a caption get the label `-100`, and why does the loss compare the
#    scores at position `t` with the label at `t + 1`?
# 5. What does greedy decoding do at each step, when does it stop, and how does beam search
#    differ?
# 6. What goes wrong if the training loop forgets `optimizer.zero_grad()`?
# 7. Why report a validation loss next to the training loss when comparing two ranks?
# 8. Why does section 3 start from `copy.deepcopy(base)` instead of wrapping `base` itself?
