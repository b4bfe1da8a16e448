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
# First, the versions and hardware this run used.

# %%
from pathlib import Path

from vicap_utils import report
from vicap_utils.notebook import model_tokenizer, setup, tokenizer_variants, write_lengths, wrote
from vicap_utils.prepare import prepare

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
audit_table = report.tokenizer_audit(tokenizers, captions)
audit_table.style.format({"roundtrip_rate": "{:.1%}", "unk_rate": "{:.1%}",
                          "tokens_per_caption": "{:.1f}"})

# %% [markdown]
# What each tokenizer gives back for a few captions:

# %%
report.decoded_examples(tokenizers, captions[:: max(1, len(captions) // N_EXAMPLES)][:N_EXAMPLES])

# %% [markdown]
# ## Lengths in syllables and in model tokens
# Vietnamese writes one syllable per space-separated word; the model counts WordPiece tokens
# of the tokenizer this profile trains with.

# %%
lengths = report.caption_lengths(captions, model_tokenizer(cfg, tokenizers))
percentiles = report.length_percentiles(lengths)
percentiles.style.format("{:.1f}")

# %% [markdown]
# ## The recommended `max_length`
# The 99th percentile of token length, plus the bos (`[DEC]`) and eos (`[SEP]`) tokens:
# longer captions are truncated, shorter ones padded.

# %%
recommended = report.recommended_max_length(lengths["tokens"], PERCENTILE)
print(f"recommended model.max_length = {recommended} "
      f"(profile {cfg.profile} uses {cfg.model.max_length})")
fig = report.plot_lengths(lengths, recommended, out / "caption_lengths.png")

# %% [markdown]
# ## What this notebook wrote
# Per-caption lengths, the tokenizer audit, and `lengths.json` with the recommendation.

# %%
files = write_lengths(out, lengths, percentiles, audit_table, recommended, PERCENTILE,
                      cfg.model.max_length)
wrote([*files, out / "caption_lengths.png"])
