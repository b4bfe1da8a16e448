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

# %% [markdown]
# **4 · Open.** Discussion notes.
# - *BLIP-1's tokenizer*: with the Vietnamese extension every syllable is one token already,
#   so "đàn_ông" would be a new, rarer token per word: the vocabulary grows (every two-syllable
#   word is an entry), each entry is seen less often in training, and a word unseen in training
#   falls back to letters. Little to gain for the model.
# - *Captions*: the model would have to write the underscores; they must be removed after
#   generation before a caption is shown.
# - *The metrics*: here segmentation matters most. BLEU and CIDEr count n-grams of tokens, so
#   "bóng đá" is a bigram of syllables but a unigram of words; scores of segmented and
#   unsegmented text are different numbers and must never be compared (notebook 04's table of
#   published figures). `vicap evaluate --tokenize words` segments with underthesea before
#   every metric, as KTVIC's published scores do with VnCoreNLP.
# - To change: a segmenter at evaluation (done), and, to train on words, segmentation before
#   the vocabulary extension and in the data set's caption encoding, undone after decoding.

# %% [markdown]
# ## Questionnaire: answers
# 1. BLIP-1's BERT tokenizer lower-cases and strips accents: "người" becomes "nguoi", so the
#    model can neither read nor write a diacritic.
# 2. It keeps the accents but most Vietnamese syllables are not in BERT's English vocabulary:
#    they become `[UNK]`, and an `[UNK]` cannot be decoded back.
# 3. Every syllable of the training captions as a whole token, plus every Vietnamese letter
#    (and its `##` continuation) so that unseen syllables can be spelled out.
# 4. The 99th percentile of the caption token lengths plus two (`[DEC]` at the start, `[SEP]`
#    at the end): 1 % of captions are cut, and padding is not wasted on a rare long tail.
# 5. Syllables are what a reader counts; tokens are what the model's `max_length` counts. With
#    the extended tokenizer they are close, with the stock one a syllable is several pieces.
# 6. The new rows start as the mean of the pieces of the syllable without accents, so "người"
#    starts near "nguoi"; they are trained with the LoRA weights (peft's trainable tokens).
