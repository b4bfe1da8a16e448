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
# "check yourself" cells; discussion notes for the open exercise, and the questionnaire's
# answers.

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

# %% [markdown]
# **4 · Open (discussion notes).** Measured on `mini` (CPU, the notebook's defaults: 60 hand
# steps, validation loss on 256 captions, which starts at LOSS_START), re-running the sections
# as the exercise says:
#
# MEASURED_TABLE
#
# - (a) Ten times the learning rate: MEASURED_LR. The lesson: the step size matters more than
#   anything else in a short run; warm-up and clipping exist because a too-large step can throw
#   the new embedding rows far from their good starting point.
# - (b) Five steps: MEASURED_FIVE. Vietnamese needs the new vocabulary rows to win against
#   the English ones; a few steps are not enough, whatever the caption's first words suggest.
# - (c) Rank and targets: MEASURED_RANK. In 60 steps the new embedding rows (trained at 10x the
#   learning rate, and the same in every variant) do most of the work, so the rank hardly
#   shows; with the full run's thousands of steps, capacity starts to matter, and adapting
#   the cross-attention lets the decoder change *what it looks at* in the image, not only how
#   it writes. Ask students why a bigger rank is not free: more parameters to fit 2,700
#   captions means more room to over-fit, which the validation loss (not the training loss)
#   would show.

# %% [markdown]
# ## Questionnaire: answers
#
# 1. BERT's uncased tokenizer lower-cases and strips accents before splitting, so "bóng" and
#    "bông" both become `bong`: the decoder cannot write a diacritic. `extend_vocabulary` adds
#    the Vietnamese syllables and letters as entries *and* as many rows of the decoder's word
#    embeddings (and of the tied output layer and its bias), each starting as the mean of its
#    accent-stripped pieces; LoRA trains those rows too (`trainable_token_indices`).
# 2. `A` (`r × d_in`) and `B` (`d_out × r`); `W` and its bias stay frozen. With `B = 0` the
#    update `B·A` is zero, so training starts from the pre-trained model exactly; `A` is random
#    so that the gradient reaching `B` is not zero.
# 3. `r × (d_in + d_out)` = 16 × 1,536 = 24,576 numbers, 4.2 % of the matrix's 589,824.
# 4. The start token `[DEC]` (no position predicts it), the prompt if any, the padding after
#    `[SEP]` (and BLIP-2's image placeholders). The decoder is causal: position `t` sees the
#    tokens up to `t` and is trained to predict token `t + 1`; comparing with the label at `t`
#    would only teach it to copy its input.
# 5. Run the decoder on the image and the tokens so far, take the most likely next token,
#    append it; stop at `[SEP]` or after `max_new_tokens`. Beam search keeps the `num_beams`
#    best partial captions by total log-probability and returns the best finished one: a
#    locally best word can lead to a worse caption, which greedy decoding cannot undo.
# 6. Gradients add up across `backward()` calls: every step would apply the sum of all the
#    gradients so far, ever larger and stale, and the loss jumps about or diverges.
# 7. The training loss is measured on captions the model is fitting (with dropout and label
#    smoothing), and keeps falling as a bigger adapter memorises; the loss on a fixed sample
#    of held-out captions compares two settings on equal terms and shows over-fitting.
# 8. `get_peft_model` changes the model it is given in place: wrapping `base` itself would
#    leave no clean base, and running the cell again would wrap the wrapped model a second
#    time. A fresh copy gives every run of the cell the same start.
