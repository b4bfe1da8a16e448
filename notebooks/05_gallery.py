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
# First, the versions and hardware this run used.

# %%
from vicap_utils import report
from vicap_utils.notebook import FINE_TUNED, evaluate_run, setup, wrote

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
fig = report.plot_gallery(items, out=run / "eval" / "gallery.png")

# %% [markdown]
# ## A self-contained HTML page
# The same gallery as one HTML file with the images embedded (base64), to open anywhere or
# attach to a report.

# %%
page = report.gallery_html(items, run / "eval" / "gallery.html")

# %% [markdown]
# ## What this notebook wrote

# %%
wrote([run / "eval" / "gallery.png", page])
