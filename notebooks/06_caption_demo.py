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

# %% [markdown]
# # 06 · Caption demo
#
# Try the captioner on your own photos. Pick an image (upload one, or take a validation or
# synthetic sample), pick a model, tune the decoding, and press **Caption**. **Compare base
# vs adapter** captions the same image with the LoRA adapter and with its base model alone,
# side by side: the base model writes English (or Vietnamese stripped of its diacritics),
# the adapter writes Vietnamese with every diacritic.
#
# The same notebook runs as a web page: `voila notebooks/06_caption_demo.ipynb`.
#
# First, the versions and hardware this run used.

# %%
from IPython.display import display

from vicap_utils.demo import build_app
from vicap_utils.notebook import setup, wrote

cfg, _ = setup(PROFILE)

# %% [markdown]
# ## The app
# The model menu lists every adapter found under the output folder (on Kaggle also under
# `/kaggle/input`, where a previous notebook's output can be attached), newest first, and
# each base model alone. A model is loaded on first use and then kept in memory.
#
# Decoding: beam search keeps the `beam size` best partial captions and shows every
# finished beam with its length-normalised log-probability; sampling draws one caption,
# with the temperature and top-p shaping how adventurous it is. A repetition penalty above
# 1 discourages words the caption already used.
#
# Uploads are checked before they are decoded: at most 15 MB, image content only (the file
# name is ignored), no more pixels than PIL's decompression-bomb limit; photos are turned
# upright from their EXIF orientation and converted to RGB.

# %%
app = build_app(base=cfg.model.base)
display(app.widget)

# %% [markdown]
# ## What this notebook wrote
# Nothing: uploads are decoded in memory and never saved, and the app only reads the
# adapters (and, the first time, builds the cached `mini` base model under `~/.cache/vicap`).

# %%
wrote([])
print(f"adapters read from {app.root}")
