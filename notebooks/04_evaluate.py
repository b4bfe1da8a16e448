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

# %% [markdown]
# # 04 · Evaluate: zero-shot base vs fine-tuned adapter
#
# We caption the run's validation images twice — with the base model alone (zero-shot) and
# with the LoRA adapter notebook 03 kept in `best/` — and score both against the same
# references, with the same tokenizer and scorers.
#
# First, the versions and hardware this run used.

# %%
from vicap_utils import report
from vicap_utils.metrics import PUBLISHED_UITVIIC_BLIP, PUBLISHED_UITVIIC_BLIP_LABEL
from vicap_utils.notebook import FINE_TUNED, ZERO_SHOT, eval_inputs, evaluate_run, setup, wrote

cfg, run = setup(PROFILE)
val_file, images = eval_inputs(run)  # stops here, naming notebook 03, when there is no adapter
print(f"references: {val_file}\nimages:     {images}")

# %% [markdown]
# ## Predictions and scores
# Beam search with the run's `eval` settings. Captions are NFC-normalised and tokenized as
# pycocoevalcap does (Stanford PTB tokenizer, lower-cased, punctuation dropped).

# %%
result = evaluate_run(run)

# %% [markdown]
# ## The metrics table
# The last row is **published**, not ours: BLIP fine-tuned on UIT-ViIC as reported in the
# literature, with another data split and setup. It is shown for scale and was **not
# reproduced here**; on the `mini` profile (synthetic images) it is not comparable at all.

# %%
scores = report.score_table({**result.metrics, PUBLISHED_UITVIIC_BLIP_LABEL:
                             PUBLISHED_UITVIIC_BLIP})
scores.round(3)

# %% [markdown]
# ## About METEOR and SPICE
# - **METEOR** is pycocoevalcap's (`-l en -norm`). Its normaliser splits Vietnamese letters
#   outside Latin-1 (ư, ơ, ă, đ and most toned vowels) into separate tokens, so it scores
#   fragments of syllables. **METEOR-vi** runs the same jar with `-l other` and without
#   `-norm` (exact matches only) on NFC, lower-cased tokens: the fairer number for Vietnamese.
# - **SPICE** parses captions into scene graphs with English CoreNLP models, so for
#   Vietnamese it means little; it is computed only when CoreNLP's jars are already
#   installed (it would otherwise download ~385 MB) and is left blank here when they are not.

# %%
{label: m["unavailable"] for label, m in result.metrics.items()}

# %%
fig = report.plot_scores(scores, out=run / "eval" / "scores.png")

# %% [markdown]
# ## Diversity
# Do the captions vary? Type-token ratio, the share of repeated captions, distinct n-grams,
# vocabulary size, mean length, and `novel_rate` (captions not copied from training).

# %%
report.diversity_table(result.metrics).round(3)

# %% [markdown]
# ## Per-image CIDEr
# CIDEr weights n-grams by their rarity across the **whole evaluated set**, so each image's
# score is computed against the document frequencies of all validation references (one
# image alone would always score 0).

# %%
fig = report.plot_cider_hist(result.per_image, out=run / "eval" / "cider_per_image.png")

# %%
best = result.per_image[FINE_TUNED].sort_values("cider", ascending=False)
best.head(5)

# %%
print(f"CIDEr: zero-shot {result.metrics[ZERO_SHOT]['CIDEr']:.3f}, "
      f"fine-tuned {result.metrics[FINE_TUNED]['CIDEr']:.3f}")

# %% [markdown]
# ## What this notebook wrote

# %%
wrote([*result.files, run / "eval" / "scores.png", run / "eval" / "cider_per_image.png"])
