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
OVERRIDES: list[str] = []  # `--set`-style settings, e.g. ["scst.samples=3", "scst.lr=1e-4"]
OVERWRITE = True  # replace an earlier SCST run; False: vicap refuses to write over it
MAX_STEPS = 0  # 0: the profile's scst.epochs; a few steps for a quick look

# %% [markdown]
# # 03b · Self-critical training: optimise CIDEr itself
#
# Cross-entropy (notebook 03) teaches the model to copy the reference captions word by word.
# Self-critical sequence training (SCST; Rennie et al. 2017) then trains on what we score: the
# model samples captions, each gets its CIDEr-D as a reward, and the update raises the
# probability of the captions that beat the others of the same image (the baseline of Luo 2020).
# We take one update by hand, then hand over to `train(..., scst_from=...)`.
#
# **You will learn to**
# - sample several captions per image and score each with CIDEr-D against its references;
# - compute the baseline (the mean reward of the other samples) and the advantage;
# - write the SCST loss and see one update raise the better captions' log-probability;
# - say what SCST costs: captions that score higher but say fewer different things.
#
# **Before you start:** notebook 03 (its `best/` adapter is where SCST starts).
#
# **Time:** `mini` on a 2-core laptop CPU: about 1.5 minutes for the profile's 3 epochs (75 s
# measured; see docs/teaching.md); `uitviic-blip` on a Kaggle T4: about 30–60 minutes for 5
# epochs (estimate: 5 sampled captions per image per step).

# %%
from dataclasses import replace

import pandas as pd
import torch

from vicap_utils import captioner, scst
from vicap_utils.builders import build_captioner, build_examples
from vicap_utils.dataset import image_rows
from vicap_utils.metrics import CiderD, python_tokenize
from vicap_utils.prepare import prepare
from vicap_utils.teach.exercises import check_close, check_equal
from vicap_utils.teach.notebook import eval_inputs, setup, wrote
from vicap_utils.train import train

cfg, run = setup(PROFILE, OVERRIDES)
eval_inputs(run)  # notebook 03's run: here, or copied in from its output attached on Kaggle
ce_adapter, scst_run = run / "best", run.parent / f"{run.name}-scst"

# %% [markdown]
# ## 1 · Start from the cross-entropy adapter
# The same base, vocabulary and LoRA shape as notebook 03, with its trained weights put back;
# every training image goes through the frozen vision encoder once (cached features).

# %%
data = prepare(cfg, cfg.data.prepared)
cap, _, _ = build_captioner(cfg, data, scst.adapter_entries(cfg, ce_adapter))
scst.load_adapter(cap, ce_adapter)
examples = build_examples(cfg, cap, data)
ids, _ = image_rows(data.train)
references = data.train.captions_by_image()

# %% [markdown]
# ## 2 · Sample k captions per image
# Not beam search: `do_sample` draws each next token from the model's distribution, so the
# five captions of an image differ, and some are better than others.

# %%
torch.manual_seed(0)
rows, k = [0, 1, 2], cfg.scst.samples
features = torch.stack([examples.train.image_source(r) for r in rows])
drawn = scst.sample(cap, features, "features", k, cfg.scst.max_new_tokens)
pd.DataFrame({"image": [r for r in rows for _ in range(k)], "sampled caption": drawn.captions})

# %% [markdown]
# ## 3 · The reward: CIDEr-D against the image's references
# Document frequencies come from all training references, counted once (`CiderD`): n-grams
# every caption has ("một", "người") weigh little, the ones that pick out this image weigh a lot.

# %%
cider = CiderD([[python_tokenize(c) for c in references[i]] for i in ids])
refs = [[python_tokenize(c) for c in references[ids[r]]] for r in rows for _ in range(k)]
rewards = scst.rewards(cider, drawn.captions, refs).view(len(rows), k)
print("references of image 0:", *references[ids[0]], sep="\n  ")
print("rewards (one row per image):", rewards, sep="\n")

# %% [markdown]
# ## 4 · The baseline and the advantage
# A caption is pushed up only if it beats the image's other samples: the baseline of each
# sample is the mean reward of the other k − 1 (Luo 2020). No extra greedy decoding needed.

# %%
baseline = scst.baseline(rewards)
advantage = rewards - baseline
pd.DataFrame({"caption": drawn.captions, "reward": rewards.flatten().numpy(),
              "baseline": baseline.flatten().numpy(), "advantage": advantage.flatten().numpy()})

# %% [markdown]
# ## 5 · One update by hand
# The loss is −advantage × log-probability of the sample (its mean over tokens, so long
# captions are not favoured), averaged. One optimiser step, then the log-probabilities again.
# The step raises what the loss lowers, the advantage-weighted log-probability: samples above
# their baseline tend to gain, those below to lose (each one need not; the weighted sum does).
# Dropout stays off here, so the two measurements differ only by the step.

# %%
forward = captioner.TrainingForward(cap.model, cap.family, examples.cached)
optimizer = torch.optim.AdamW([p for p in cap.model.parameters() if p.requires_grad],
                              lr=cfg.scst.lr * 10)
cap.model.eval()  # no dropout: the same forward before and after the step
logp = scst.sequence_logprobs(forward, features, drawn)
loss = scst.loss(logp, rewards, baseline)
optimizer.zero_grad()
loss.backward()
optimizer.step()
with torch.no_grad():
    after = scst.sequence_logprobs(forward, features, drawn)
change = (after - logp.detach()).numpy()
up = advantage.flatten().numpy() > 0
print(f"loss {loss.item():.4f}; advantage-weighted log-prob change "
      f"{(advantage.flatten().numpy() * change).mean():+.5f}")
print(f"mean log-prob change: advantage > 0 {change[up].mean():+.4f}, "
      f"advantage <= 0 {change[~up].mean():+.4f}")

# %% [markdown]
# ## 6 · Hand over: the same loop as cross-entropy
# `train(cfg, run, scst_from=adapter)` (`vicap train --profile NAME --out RUN --scst-from
# RUN/best`) runs these steps for every batch of training images, with the `scst` section's
# learning rate (about 1/10 of cross-entropy's) and epochs, and keeps everything the
# cross-entropy run has: checkpoints in `last/`, `--resume`, early stopping on validation CIDEr,
# `history.csv`, `best/` and `final/`.

# %%
del cap, optimizer, forward
run_cfg = replace(cfg, train=replace(cfg.train, max_steps=MAX_STEPS, val_sample=0))
summary = train(run_cfg, scst_run, overwrite=OVERWRITE, scst_from=ce_adapter)
print(f"validation CIDEr: cross-entropy {pd.read_csv(run / 'history.csv')['val_CIDEr'].max():.3f}"
      f" → SCST {summary['best_val_CIDEr']:.3f}")

# %% [markdown]
# SCST optimises CIDEr, and CIDEr rewards the safe, frequent phrasing: expect fewer distinct
# words (TTR, distinct-n, vocabulary) and more repeated captions. `vicap evaluate … --compare`
# and `metrics.compare` put both models side by side and say so plainly (notebook 04).
#
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · The baseline.** What is the baseline of image 0's first sample? Compute it from the
# `rewards` table yourself (to four decimals).

# %%
BASELINE_00 = None  # your answer: a number

# %%
check_close("1 · the baseline", BASELINE_00, lambda: float(baseline[0, 0]),
            "the mean of the rewards of image 0's other samples (row 0 of `rewards`)", decimals=4)

# %% [markdown]
# **2 · Pushed up.** How many of the samples of image 0 does the update push up?

# %%
N_PUSHED_UP = None  # your answer: a count

# %%
check_equal("2 · pushed up", N_PUSHED_UP, lambda: int((advantage[0] > 0).sum()),
            "the samples whose reward beats the mean of the image's other samples")

# %% [markdown]
# **3 · Open.** Train again with `OVERRIDES = ["scst.greedy_baseline=true"]` (Rennie's baseline:
# the greedy caption's reward). Then caption the validation images with both SCST adapters and
# compare them with `metrics.compare`: which baseline keeps more diversity?
#
# ## What this notebook wrote

# %%
wrote([scst_run / "best", scst_run / "final", scst_run / "last", scst_run / "history.csv",
       scst_run / "loss_curve.png", scst_run / "config.json", scst_run / "summary.json"])
