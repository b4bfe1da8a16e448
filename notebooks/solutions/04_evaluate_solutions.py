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
from vicap_utils.ops.io import read_json
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

# %% [markdown]
# **4 · Open.** Discussion notes.
# - *Which metric to trust*: CIDEr (CIDEr-D) is built for captioning (consensus with several
#   references, rare telling n-grams weigh more) and is what the literature ranks by; BLEU-4
#   and ROUGE-L say whether the wording matches; METEOR-vi adds exact unigram alignment with a
#   fragmentation penalty. None says whether a caption is *true*: exercise 2's wrong caption
#   keeps a high BLEU. Read two or three together, with the diversity figures, and look at the
#   gallery (notebook 05).
# - *METEOR vs METEOR-vi*: METEOR's `-norm` keeps Latin-1 letters only, so ư, ơ, ă, đ and most
#   toned vowels are split out as separate tokens ("người" → "ng ư ờ i"): it aligns fragments
#   of syllables, rewarding a caption that merely shares letters. METEOR-vi (`-l other`, no
#   `-norm`, NFC) matches whole syllables only; the two numbers of this run are printed below.
# - *Gaming CIDEr*: repeat the image's rarest reference n-grams ("áo vàng áo vàng bóng
#   chuyền"): TF-IDF rewards them. CIDEr-D's length penalty (a Gaussian on the length
#   difference) and clipping of the candidate's counts to the references' blunt that, but a
#   caption stitched from reference n-grams in an ungrammatical order can still score well;
#   self-critical training (`vicap train --scst-from`) optimises CIDEr directly and may drift so;
#   the diversity figures catch it.

# %%
metrics = read_json(run / "eval" / "metrics.json")
for label, m in metrics.items():
    print(f"{label:>11}: METEOR {m.get('METEOR')}, METEOR-vi {m.get('METEOR-vi')} "
          f"(None: Java not available)")

# %% [markdown]
# ## Questionnaire: answers
# 1. Clipping counts each caption word at most as often as the reference that has it most, so
#    "cầu thủ cầu thủ" cannot score by repetition; the brevity penalty `exp(1 - r/c)` punishes
#    captions shorter than the closest reference, which would otherwise reach high precision
#    with two safe words.
# 2. CIDEr's weights are inverse document frequencies over the evaluated set: with one image,
#    every reference n-gram occurs in every "document", its IDF is log(1/1) = 0, and so is the
#    score. CIDEr is a property of a set, not of one caption.
# 3. The base model never learnt Vietnamese: it writes English captions (the `mini` base was
#    pre-trained on the synthetic English captions, the real BLIP on English web captions),
#    which share no n-gram with Vietnamese references.
# 4. The data set, the split and the tokenisation before the metrics (syllables as written vs
#    word-segmented). A `mini` run differs in the first: synthetic drawings, not real UIT-ViIC
#    photos; a word-segmented evaluation would differ in the third.
# 5. `TTR` is corpus-level: distinct words over all words of all captions together (the BLIP-2
#    report's TTR, equal to distinct-1). `TTR_per_caption` is the mean within each caption.
#    When every image gets the same caption, `TTR` collapses while `TTR_per_caption` does not
#    move (each caption on its own is still varied).
# 6. METEOR's normaliser splits letters outside Latin-1 into separate tokens, so it scores
#    fragments of Vietnamese syllables; METEOR-vi runs the same jar on NFC text with exact
#    matches only, so a syllable counts only when it is right, diacritics included.
# 7. Training was cut off (no `final/`, or `last/state.json` says unfinished): `best/` is the
#    best epoch so far, not the run's result. Finish it (notebook 03 or `vicap train ...
#    --resume`), or report the numbers as a progress check with the epoch they come from.
# 8. `TTR` (= distinct-1), distinct-2, the vocabulary size (falling) and the repetition rate
#    (rising): `metrics.compare` lists whichever got worse. CIDEr rewards n-grams many references
#    share; sampling then pushes up the captions that score above their siblings, so the model
#    drifts towards the frequent, safe phrasing and drops rarer words. On 60 unseen `mini`
#    images (seed 777, beam 3) SCST raised CIDEr 2.53 → 2.77 while its vocabulary fell from 35
#    to 28 words and the repetition rate rose from 0.40 to 0.55.
