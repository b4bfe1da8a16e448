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
PROFILE = "auto"  # the same profile as notebook 02

# %% [markdown]
# # Solutions · 02 · Caption lengths and the tokenizer
#
# One way to answer each exercise of notebook 02 (run notebook 01 first), with the same
# "check yourself" cells.

# %%
from pathlib import Path

from vicap_utils.prepare import prepare
from vicap_utils.teach import report
from vicap_utils.teach.exercises import (
            check,
            check_close,
            check_equal,
            token_count,
            unseen_and_kept,
)
from vicap_utils.teach.notebook import model_tokenizer, setup, tokenizer_variants

cfg, _ = setup(PROFILE)
captions = [a.caption for a in prepare(cfg, Path(cfg.data.prepared)).train.annotations]
tokenizers = tokenizer_variants(captions)
lengths = report.caption_lengths(captions, model_tokenizer(cfg, tokenizers))

# %% [markdown]
# **1 · Truncation.** The share of captions over 16 tokens is the mean of a boolean column.

# %%
SHARE_OVER_16 = float((lengths["tokens"] > 16).mean())
check_close("1 · truncation", SHARE_OVER_16, lambda: float((lengths["tokens"] > 16).mean()),
            "a fraction of all training captions, counted in model tokens (not syllables), "
            "strictly longer than 16", decimals=2)

# %% [markdown]
# **2 · One word.** The stock tokenizer writes "người" as the pieces of "nguoi"; the extended
# one has the syllable itself.

# %%
TOKENS_STOCK = len(tokenizers["stock (strips accents)"]("người", add_special_tokens=False)[
    "input_ids"])
TOKENS_EXTENDED = len(tokenizers["extended"]("người", add_special_tokens=False)["input_ids"])
check_equal("2 · stock tokenizer", TOKENS_STOCK,
            lambda: token_count(tokenizers["stock (strips accents)"], "người"),
            "the number of ids the stock tokenizer gives 'người'")
check_equal("2 · extended tokenizer", TOKENS_EXTENDED,
            lambda: token_count(tokenizers["extended"], "người"),
            "the number of ids the extended tokenizer gives 'người'")

# %% [markdown]
# **3 · A sentence it never saw.** "bơi", "trọng tài", "mưa" are in no synthetic caption; the
# extension's letters spell them out.

# %%
UNSEEN_SENTENCE = "Trọng tài thổi còi khi vận động viên bơi về đích dưới mưa."
extended = tokenizers["extended"]
print(extended.decode(extended(UNSEEN_SENTENCE, add_special_tokens=False)["input_ids"]))
check("3 · an unseen sentence", UNSEEN_SENTENCE,
      lambda: isinstance(UNSEEN_SENTENCE, str)
      and unseen_and_kept(tokenizers["extended"], UNSEEN_SENTENCE, captions),
      "a sentence with a syllable the training captions never use, which must come back whole",
      "right: unseen syllables come back whole, letter by letter")
