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
N_BEST = 3  # images with the highest fine-tuned per-image CIDEr
N_WORST = 3  # and with the lowest

# %% [markdown]
# # 05 · Gallery: references, zero-shot and fine-tuned captions
#
# Numbers hide what captions look like. Here are the validation images the fine-tuned adapter
# describes best and worst (by per-image CIDEr), each with its references and both systems'
# captions.
#
# **You will learn to**
# - look at captions, not only at scores: what the best and the worst images have in common;
# - connect per-image CIDEr to what a caption gets right or wrong;
# - see what decoding choices (beam size, repetition penalty) change on a hard image.
#
# **Before you start:** notebook 04 (its predictions and scores are reused here).
#
# **Time:** `mini` on a 2-core laptop CPU: about 15 seconds
# (12 s measured; see docs/teaching.md).
# `uitviic-blip` on a Kaggle T4: under a minute when notebook 04 ran first (estimate).
#
# First, the versions and hardware this run uses.

# %%
import textwrap

import matplotlib.pyplot as plt

from vicap_utils.images import load_rgb
from vicap_utils.ops.adapters import load_model
from vicap_utils.teach import report
from vicap_utils.teach.exercises import check_biggest_gain, check_equal, three_decodings
from vicap_utils.teach.notebook import FINE_TUNED, ZERO_SHOT, evaluate_run, setup, wrote

cfg, run = setup(PROFILE)

# %% [markdown]
# ## Predictions
# Notebook 04's predictions and per-image scores in `eval/` are reused when they are newer
# than the adapter; otherwise they are computed (and written) now.

# %%
result = evaluate_run(run, reuse=True)

# %% [markdown]
# ## Best and worst images
# Ranked by the fine-tuned adapter's per-image CIDEr (computed against the whole validation
# set). Text is drawn with DejaVu Sans, which matplotlib ships and which has every
# Vietnamese letter.

# %%
items = report.gallery_items(result.val, result.images, result.predictions,
                             result.cider(FINE_TUNED), N_BEST, N_WORST)

# %% [markdown]
# A grid, three images a row: each image above two of its references and every system's
# caption.

# %% tags=["plot-gallery"]
columns, rows = 3, max(1, -(-len(items) // 3))
fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 6.2 * rows), squeeze=False)
for ax in axes.flat:
    ax.axis("off")
for ax, item in zip(axes.flat, items):
    ax.imshow(load_rgb(item.path))
    ax.set_title(f"{item.group} · image {item.image_id} · CIDEr {item.cider:.2f}", fontsize=9,
                 family=report.FONT)
    lines = [f"ref: {r}" for r in item.references[:2]]
    lines += [f"{label}: {text}" for label, text in item.captions.items()]
    text = "\n".join(textwrap.fill(line, 50, subsequent_indent="   ") for line in lines)
    ax.text(0, -0.04, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
            family=report.FONT)
fig = report.finish(fig, run / "eval" / "gallery.png", h_pad=3)

# %% [markdown]
# ## A self-contained HTML page
# The same gallery as one HTML file with the images embedded (base64), to open anywhere or
# attach to a report.

# %%
page = report.gallery_html(items, run / "eval" / "gallery.html")

# %% [markdown]
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · The biggest gain.** Which validation image gained most CIDEr from fine-tuning (the
# fine-tuned per-image CIDEr minus the zero-shot one)? Write a function of two dicts of image
# id → score that returns that image id, and try it on `result.cider(FINE_TUNED)` and
# `result.cider(ZERO_SHOT)`. The check also tries it on scores where zero-shot is not 0: on
# `mini` it is 0 everywhere, and there the best fine-tuned image looks like the biggest gain.

# %%
BIGGEST_GAIN = None  # your answer: a function (fine_tuned, zero_shot) → image id

# %%
check_biggest_gain(BIGGEST_GAIN, result.cider(FINE_TUNED), result.cider(ZERO_SHOT))

# %% [markdown]
# **2 · Decoding the worst image.** Load the adapter (`load_model(str(run / "best"))`) and
# caption the worst image of the gallery three ways: greedy (beam 1), beam 5, and beam 5 with
# `repetition_penalty=1.5` (`captioner.Decoding(num_beams=…, repetition_penalty=…)`). Put the
# three captions in a list, in that order. Do they differ? Which is right?

# %%
worst = next(item for item in items if item.group == "worst")
WORST_CAPTIONS = None  # your answer: [greedy, beam 5, beam 5 with the penalty]

# %%
check_equal("2 · three decodings", WORST_CAPTIONS,
            lambda: three_decodings(load_model(str(run / "best")), load_rgb(worst.path)),
            "three captions of the worst image by the adapter, greedy first, then beam 5, "
            "then beam 5 with the penalty")

# %% [markdown]
# **3 · Open.** Look at the worst images: what does the adapter get wrong — the sport, the
# colour, the number of players? Count the mistakes of each kind over the whole validation set
# (`result.predictions[FINE_TUNED]` against `result.val.captions_by_image()`). Which would
# more training data fix, and which a bigger image size?

# %% [markdown]
# ## Questionnaire
# Answer in a sentence or two each; the solutions notebook has answers.
#
# 1. How are the gallery's best and worst images chosen?
# 2. Why is an image's per-image CIDEr not a grade of its caption on its own?
# 3. On `mini`, why do "the best fine-tuned image" and "the biggest gain" name the same image?
# 4. What do greedy decoding, beam search and a repetition penalty each do?
# 5. Why does the HTML page embed its images instead of linking to them?
# 6. What do a gallery and per-image scores show that the mean CIDEr hides?

# %% [markdown]
# ## What this notebook wrote

# %%
wrote([run / "eval" / "gallery.png", page])
