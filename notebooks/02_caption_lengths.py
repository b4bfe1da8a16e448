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
PERCENTILE = 99  # max_length covers this share of training captions (plus bos and eos)
N_EXAMPLES = 4

# %% [markdown]
# # 02 · Caption lengths and the tokenizer
#
# Two questions decide how captions are fed to BLIP: how long they are (the `max_length`
# that pads and truncates them) and whether the tokenizer can write Vietnamese at all.
#
# **You will learn to**
# - tell syllables (what a Vietnamese reader counts) from tokens (what the model counts);
# - see why BLIP-1's tokenizer loses every diacritic, and what the vocabulary extension does;
# - choose `max_length` from the length distribution, and say what truncation costs.
#
# **Before you start:** notebook 01 (its training split is read here).
#
# **Time:** `mini` on a 2-core laptop CPU: about 15 seconds
# (11 s measured; see docs/teaching.md).
# UIT-ViIC on a Kaggle T4 session: under a minute (estimate).
#
# First, the versions and hardware this run uses.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vicap_utils.ops.io import atomic_write_json, atomic_write_text
from vicap_utils.prepare import prepare
from vicap_utils.teach import report
from vicap_utils.teach.exercises import (
                          check,
                          check_close,
                          check_equal,
                          token_count,
                          unseen_and_kept,
)
from vicap_utils.teach.notebook import (
                          model_tokenizer,
                          setup,
                          tokenizer_variants,
                          wrote,
)
from vicap_utils.vocab import tokenizer_report

cfg, _ = setup(PROFILE)
out = Path(cfg.data.prepared)

# %% [markdown]
# ## The training captions
# The training split notebook 01 prepared, which notebook 03 trains on, so the extended
# vocabulary built here is the one training builds.

# %%
captions = [a.caption for a in prepare(cfg, out).train.annotations]
print(f"{len(captions)} training captions")

# %% [markdown]
# ## Three tokenizers
# BLIP-1's tokenizer is BERT-base uncased. By default it strips diacritics ("người" →
# "nguoi"); with `strip_accents=False` most syllables become `[UNK]`. The extended tokenizer
# appends the missing syllables and every Vietnamese letter (and its `##` piece) to the
# WordPiece vocabulary, so captions survive encode → decode with their diacritics.

# %%
tokenizers = tokenizer_variants(captions)

# %% [markdown]
# Per tokenizer: the share of captions that survive encode → decode, the `[UNK]` rate and the
# tokens per caption.

# %% tags=["tokenizer-audit"]
reports = {name: tokenizer_report(tok, captions) for name, tok in tokenizers.items()}
columns = ["roundtrip_rate", "unk_rate", "tokens_per_caption"]
audit_table = pd.DataFrame.from_dict(reports, orient="index")[columns]
audit_table.style.format({"roundtrip_rate": "{:.1%}", "unk_rate": "{:.1%}",
                          "tokens_per_caption": "{:.1f}"})

# %% [markdown]
# What each tokenizer gives back for a few captions:

# %% tags=["decoded"]
shown = captions[:: max(1, len(captions) // N_EXAMPLES)][:N_EXAMPLES]
pd.DataFrame([{"caption": caption} | {
    name: tok.decode(tok(caption, add_special_tokens=False)["input_ids"])
    for name, tok in tokenizers.items()} for caption in shown])

# %% [markdown]
# ## Lengths in syllables and in model tokens
# Vietnamese writes one syllable per space-separated word; the model counts WordPiece tokens
# of the tokenizer this profile trains with.

# %%
tokenizer = model_tokenizer(cfg, tokenizers)
lengths = report.caption_lengths(captions, tokenizer)

# %% [markdown]
# Their percentiles (p100 is the longest caption) and the mean:

# %% tags=["percentiles"]
counted = lengths[["syllables", "tokens"]]
percentiles = counted.quantile([0.5, 0.9, 0.95, 0.99, 1])
percentiles.index = ["p50", "p90", "p95", "p99", "p100"]
percentiles.loc["mean"] = counted.mean()
percentiles = percentiles.round(1)
percentiles.style.format("{:.1f}")

# %% [markdown]
# ## The recommended `max_length`
# The 99th percentile of token length, plus the bos (`[DEC]`) and eos (`[SEP]`) tokens:
# longer captions are truncated, shorter ones padded.

# %% tags=["max-length"]
recommended = int(np.ceil(np.percentile(lengths["tokens"], PERCENTILE))) + 2  # bos and eos

# %% [markdown]
# Both distributions, with the token budget `max_length` leaves a caption (saved as
# `caption_lengths.png`):

# %% tags=["plot-lengths"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, col, color in zip(axes, ("syllables", "tokens"), ("tab:blue", "tab:purple")):
    bins = np.arange(lengths[col].min(), lengths[col].max() + 2) - 0.5  # one bar per length
    ax.hist(lengths[col], bins=bins, color=color)
    ax.set(xlabel=f"caption length ({col})", ylabel="captions")
axes[1].axvline(recommended - 2, color="grey", ls="--", lw=1,
                label=f"max_length {recommended} − bos/eos")
report.finish(fig, out / "caption_lengths.png")  # grid, legend, saved atomically
print(f"recommended model.max_length = {recommended} "
      f"(profile {cfg.profile} uses {cfg.model.max_length})")

# %% [markdown]
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · Truncation.** What share of the training captions is longer than 16 tokens (so a
# `max_length` of 18, with `[DEC]` and `[SEP]`, would cut them)? Use the `lengths` table;
# two decimals are enough.

# %%
SHARE_OVER_16 = None  # your answer: a fraction between 0 and 1

# %%
check_close("1 · truncation", SHARE_OVER_16, lambda: float((lengths["tokens"] > 16).mean()),
            "a fraction of all training captions, counted in model tokens (not syllables), "
            "strictly longer than 16", decimals=2)

# %% [markdown]
# **2 · One word.** How many tokens does the stock tokenizer
# (`tokenizers["stock (strips accents)"]`) use for "người", and how many does the extended
# one use? (`len(tok("người", add_special_tokens=False)["input_ids"])`)

# %%
TOKENS_STOCK = None  # your answer
TOKENS_EXTENDED = None  # your answer

# %%
check_equal("2 · stock tokenizer", TOKENS_STOCK,
            lambda: token_count(tokenizers["stock (strips accents)"], "người"),
            "the number of ids the stock tokenizer gives 'người'")
check_equal("2 · extended tokenizer", TOKENS_EXTENDED,
            lambda: token_count(tokenizers["extended"], "người"),
            "the number of ids the extended tokenizer gives 'người'")

# %% [markdown]
# **3 · A sentence it never saw.** Write a Vietnamese sentence with at least one syllable that
# no training caption has (e.g. about a swimmer, a referee, the rain). Does the extended
# tokenizer still give it back with every diacritic? (It appends every Vietnamese letter too,
# so unseen syllables are spelled out letter by letter; how it spaces punctuation, "3 - 0",
# does not count.)

# %%
UNSEEN_SENTENCE = None  # your answer: a sentence (a string)

# %%
check("3 · an unseen sentence", UNSEEN_SENTENCE,
      lambda: isinstance(UNSEEN_SENTENCE, str)
      and unseen_and_kept(tokenizers["extended"], UNSEEN_SENTENCE, captions),
      "a sentence with a syllable the training captions never use, which must come back whole",
      "right: unseen syllables come back whole, letter by letter")

# %% [markdown]
# **4 · Open.** Vietnamese words often span two syllables ("đàn ông", "bóng đá"). A word
# segmenter (e.g. pyvi) writes them as one token ("đàn_ông"). Would that help BLIP-1's
# tokenizer, its captions, or the metrics? What would you have to change?

# %% [markdown]
# ## Questionnaire
# Answer in a sentence or two each; the solutions notebook has answers.
#
# 1. What does BLIP-1's stock tokenizer do to "người", and why can the model then never write
#    Vietnamese?
# 2. What goes wrong when the stock tokenizer keeps accents (`strip_accents=False`) but nothing
#    else changes?
# 3. What does the vocabulary extension add to the tokenizer?
# 4. How is the recommended `max_length` chosen, and why is 2 added?
# 5. Why does this notebook count caption lengths both in syllables and in tokens?
# 6. How do the new embedding rows start, and how do they learn?

# %% [markdown]
# ## What this notebook wrote
# Per-caption lengths, the tokenizer audit, and `lengths.json` with the recommendation.

# %%
files = [
    atomic_write_text(out / "caption_lengths.csv", lengths.to_csv(index=False)),
    atomic_write_text(out / "tokenizer_audit.csv", audit_table.to_csv()),
    atomic_write_json(out / "lengths.json", {
        "recommended_max_length": recommended, "percentile": PERCENTILE,
        "profile_max_length": cfg.model.max_length, "percentiles": percentiles.to_dict(),
        "tokenizers": audit_table.to_dict(orient="index")}),
]
wrote([*files, out / "caption_lengths.png"])
