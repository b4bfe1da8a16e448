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
PROFILE = "auto"  # the same profile as notebook 04

# %% [markdown]
# # Solutions · 04 · Evaluate
#
# One way to answer each exercise of notebook 04 (run notebooks 01 and 03 first), with the same
# "check yourself" cells.

# %%
import math
from collections import Counter

from vicap_utils import captioner
from vicap_utils.data import load_captions
from vicap_utils.images import load_rgb
from vicap_utils.metrics import python_tokenize
from vicap_utils.ops.adapters import load_model
from vicap_utils.teach.exercises import (
    BLEU_CASE,
    bleu1,
    check,
    check_close,
    cider_alone,
    wrong_but_high_bleu,
)
from vicap_utils.teach.notebook import eval_inputs, setup

cfg, run = setup(PROFILE)
refs_file, images = eval_inputs(run)
references = load_captions(refs_file)
first = next(iter(references.images))
cap = load_model(str(run / "best"))
picture = load_rgb(images / references.images[first].file_name)
hypothesis = python_tokenize(captioner.caption(cap, images=[picture],
                                               dec=captioner.Decoding.from_eval(cfg.eval))[0][0][0])
gts = {first: [python_tokenize(r) for r in references.captions_by_image()[first]]}
res = {first: [hypothesis]}
print(hypothesis, "|", gts[first][0])

# %% [markdown]
# **1 · BLEU-1 by hand.** Clipped matches over the caption's length, times the brevity
# penalty against the reference closest in length. Here "cầu" and "thủ" come twice but no
# reference has them more than once, so 4 of the 6 words count; the closest reference has 7
# words, so the penalty is `exp(1 - 7/6)`. Without the clipping, the penalty, or with the
# shortest or the average reference length, the number comes out different.

# %%
case_references, case_caption = BLEU_CASE
words = case_caption.split()
counts = Counter(words)
best_count = {w: max(r.split().count(w) for r in case_references) for w in counts}
precision = sum(min(n, best_count[w]) for w, n in counts.items()) / len(words)
closest = min((abs(len(r.split()) - len(words)), len(r.split())) for r in case_references)[1]
penalty = 1.0 if len(words) > closest else math.exp(1 - closest / len(words))
BLEU1_CASE = round(precision * penalty, 2)
print(f"precision {precision:.4f} × penalty {penalty:.4f} = {precision * penalty:.4f}")
check_close("1 · BLEU-1 by hand", BLEU1_CASE, lambda: bleu1(case_references, case_caption),
            "clip each word's count, divide by the caption's length, then the brevity penalty "
            "against the reference closest in length", decimals=2)

# %% [markdown]
# **2 · High BLEU, wrong caption.** Keep a reference's words and change the colour.

# %%
colours = ["đỏ", "vàng", "trắng", "đen", "xanh"]
reference = gts[first][0].split()
for i, word in enumerate(reference):
    if word in colours:
        reference[i] = next(c for c in colours if c not in " ".join(gts[first]).split())
        break
else:
    reference[-1] = "hươu"  # no colour to change: a giraffe will do
WRONG_CAPTION = " ".join(reference)
print(WRONG_CAPTION)
check("2 · high BLEU, wrong caption", WRONG_CAPTION,
      lambda: isinstance(WRONG_CAPTION, str) and wrong_but_high_bleu(gts[first], WRONG_CAPTION),
      "one reference word for word, with exactly one word swapped for one no reference has",
      "right: BLEU counts shared words, not whether the caption is true")

# %% [markdown]
# **3 · CIDEr of one image alone.** With a single image every n-gram of the references
# appears in every "document", so its inverse document frequency, log(1/1), is 0: CIDEr needs
# the whole set to know which words are telling.

# %%
CIDER_ALONE = cider_alone(gts[first], res[first][0])
check_close("3 · CIDEr of one image", CIDER_ALONE, lambda: cider_alone(gts[first], res[first][0]),
            "a set of one image: one key in both dicts, the first image's references and "
            "caption; the overall score, not the per-image array", decimals=2)
