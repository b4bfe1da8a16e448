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
PROFILE = "auto"  # the same profile as notebook 06

# %% [markdown]
# # Solutions · 06 · Caption demo
#
# One way to answer each exercise of notebook 06 (run notebook 03 first), with the same
# "check yourself" cells; no widgets needed.

# %%
import torch

from vicap_utils import captioner
from vicap_utils.teach.demo import build_app, open_sample
from vicap_utils.teach.exercises import check_equal, check_temperature
from vicap_utils.teach.notebook import setup

cfg, _ = setup(PROFILE)
app = build_app(base=cfg.model.base)
picture = open_sample(next(iter(app.samples.values())))
adapter = next(c for c in app.choices if not c.no_adapter)
base = next(c for c in app.choices if c.no_adapter)

# %% [markdown]
# **1 · Who writes Vietnamese?**

# %%
for choice in (base, adapter):
    print(f"{choice.label}: {captioner.caption(app.load(choice)[0], images=[picture])[0][0][0]}")
WRITES_DIACRITICS = "adapter"
check_equal("1 · diacritics", WRITES_DIACRITICS, "adapter" if any(
    not c.no_adapter for c in app.choices) else "base",
    "the one whose caption has ă, ơ, ư, đ or tone marks")

# %% [markdown]
# **2 · Temperature.**

# %%
distinct = {}
for temperature in (0.3, 1.5):
    torch.manual_seed(0)
    dec = captioner.Decoding(num_beams=1, do_sample=True, temperature=temperature)
    drawn = [captioner.caption(app.load(adapter)[0], images=[picture], dec=dec)[0][0][0]
             for _ in range(5)]
    distinct[temperature] = len(set(drawn))
    print(temperature, drawn)
DISTINCT_LOW_T, DISTINCT_HIGH_T = distinct[0.3], distinct[1.5]
check_temperature(DISTINCT_LOW_T, DISTINCT_HIGH_T, app.load(adapter)[0], picture)

# %% [markdown]
# **3 · Open.** Discussion notes (the photos are the students'; nothing to run here).
# - On `mini` the adapter has only ever seen drawings of four ball sports: every photo becomes
#   "players in <colour> shirts playing <sport>" — it can only say what its training captions
#   say. The sport it picks follows the dominant colour (green → football, sand → volleyball).
# - With the real UIT-ViIC adapter, sports scenes work best (the data set is about sports);
#   streets and meals come out as the nearest sports scene or with generic phrases, because
#   neither the objects nor their words are in the captions it was fine-tuned on.
# - Fixes: captions of the new kinds of scene (a few hundred per kind, in the same style),
#   images of several sizes and lightings, and an evaluation split that holds those scenes too
#   so that the improvement is measured, not guessed.

# %% [markdown]
# ## Questionnaire: answers
# 1. BLIP-1's own tokenizer strips accents and the base model was trained on English captions:
#    it has neither the tokens nor the training to write Vietnamese letters.
# 2. Sampling divides the scores by the temperature before the softmax: below 1 the likeliest
#    token's share grows (at 0.3 the draws are mostly one caption), above 1 the distribution
#    flattens and rarer tokens are drawn, so captions vary (and err) more.
# 3. Photos of people are personal data: decoded in memory, they leave nothing on a shared
#    machine or in a Kaggle output that others can download.
# 4. The adapter can only use the words and scenes of its training captions; a meal is out of
#    its distribution, and the decoder falls back to its most frequent caption pattern.
# 5. Sampling draws random numbers: with the same seed the same five captions come back, so
#    the check can draw them again and compare counts instead of trusting a guess.
