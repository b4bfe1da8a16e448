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
PROFILE = "auto"  # the same profile as notebook 03

# %% [markdown]
# # Solutions · 03 · Fine-tune BLIP with LoRA
#
# One way to answer each exercise of notebook 03 (run notebook 01 first), with the same
# "check yourself" cells.

# %%
import re
from dataclasses import replace
from pathlib import Path

from vicap_utils import captioner
from vicap_utils.prepare import prepare
from vicap_utils.teach.exercises import (
    check_close,
    check_equal,
    lora_share,
    lora_target_count,
    stock_round_trip,
)
from vicap_utils.teach.notebook import setup

cfg, _ = setup(PROFILE)
captions = [a.caption for a in prepare(cfg, Path(cfg.data.prepared)).train.annotations]
example = captions[0]

# %% [markdown]
# **1 · Without the extension.** The stock tokenizer lower-cases and strips the accents.

# %%
stock = captioner.load_base(cfg.model).tokenizer
DECODED_STOCK = stock.decode(stock(example, add_special_tokens=False)["input_ids"])
print(DECODED_STOCK)
check_equal("1 · without the extension", DECODED_STOCK, lambda: stock_round_trip(cfg, example),
            "the text the fresh base's own tokenizer gives back, not the extended one's")

# %% [markdown]
# **2 · Cross-attention too.** Three more matrices (query, key, value) per decoder layer.

# %%
cap = captioner.load_base(cfg.model)
targets = captioner.lora_targets(cap.family, replace(cfg.lora, cross_attention=True))
N_TARGETS_CROSS = sum(bool(re.fullmatch(targets, n)) for n, _ in cap.model.named_modules())
check_equal("2 · cross-attention", N_TARGETS_CROSS,
            lambda: lora_target_count(cfg, cross_attention=True),
            "module names of a fresh base that the pattern matches in full, with cross_attention "
            "on in the LoRA settings")

# %% [markdown]
# **3 · Rank and size.** LoRA adds `r × (d_in + d_out)` parameters per adapted matrix, so the
# trainable share grows with the rank; the new vocabulary rows stay the same.

# %%
shares = {}
for r in (4, 32):
    cap = captioner.load_base(cfg.model)
    captioner.extend_vocabulary(cap, captions)
    model = captioner.add_lora(cap, captioner.lora_config(cap, replace(cfg.lora, r=r)))
    shares[r] = captioner.trainable_table(model)[-1]["share_%"]
SHARE_R4, SHARE_R32 = round(shares[4], 2), round(shares[32], 2)
print(shares)
check_close("3 · rank 4", SHARE_R4, lambda: lora_share(cfg, 4, captions),
            "a percentage of all parameters (row 'all'), for a fresh base with the extended "
            "vocabulary and r=4", decimals=2)
check_close("3 · rank 32", SHARE_R32, lambda: lora_share(cfg, 32, captions),
            "the same with r=32", decimals=2)
