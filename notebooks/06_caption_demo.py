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
# **You will learn to**
# - caption your own photos with the base model and with your adapter, and compare them;
# - tell beam search from sampling, and what temperature, top-p and a repetition penalty do;
# - judge a captioner by eye on images it has never seen.
#
# **Before you start:** notebook 03 (it trains the adapter; without one the app offers the
# base model alone and says how to train).
#
# **Time:** `mini` on a 2-core laptop CPU: a few seconds per caption; allow 15 minutes to play
# (the cells themselves run in about 10 seconds: 9 s measured). On a Kaggle T4 a caption takes
# well under a second (estimate). Widgets need a live kernel: Jupyter, or Kaggle's interactive
# editor.
#
# **What to try**
# - **Beams vs sampling:** caption one image with beam size 1, 3 and 8; then tick *Sampling*
#   and press *Caption* a few times: beams give the same caption every time, sampling does not.
# - **Temperature:** with sampling, compare 0.3 and 1.5: low is safe and repetitive, high is
#   varied and soon wrong.
# - **Base vs adapter:** *Compare base vs adapter* on a synthetic scene, then on a photo of
#   your own: the base writes English (or Vietnamese without diacritics), the adapter
#   Vietnamese with every diacritic — and only knows what its training images showed.
# - **Repetition penalty:** push it to 2.0 and watch the captions avoid their own words.
#
# First, the versions and hardware this run uses.

# %%
import textwrap

import matplotlib.pyplot as plt
import torch  # noqa: F401  (for exercise 2)
from IPython.display import display

from vicap_utils import captioner
from vicap_utils.teach import report
from vicap_utils.teach.demo import build_app, open_sample, partner
from vicap_utils.teach.exercises import check_equal, check_temperature
from vicap_utils.teach.notebook import setup, wrote

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
# ## A handout: base and adapter side by side
# The same comparison without widgets, as a figure to print: the first sample image captioned
# by the base model alone and by the newest adapter (the app's model cache serves both).

# %%
image_name, image = next(iter(app.samples.items()))
picture = open_sample(image)
choice = app.choices[0]
results = {c.label: app.load(c)[0] for c in filter(None, [choice, partner(choice, app.choices)])}
handout = {label: captioner.caption(cap, images=[picture])[0][0][0]
           for label, cap in results.items()}
handout_file = app.root / "demo" / "handout_base_vs_adapter.png"
lines = [textwrap.fill(f"{label}: {text}", 60, subsequent_indent="   ")
         for label, text in handout.items()]
fig, ax = plt.subplots(figsize=(6, 4.5 + 0.45 * sum(line.count("\n") + 1 for line in lines)))
ax.imshow(picture)
ax.axis("off")
ax.set_title(image_name, fontsize=10, family=report.FONT)
ax.text(0, -0.04, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=10,
        family=report.FONT)
report.finish(fig, handout_file)  # saved atomically: never half an image
for label, text in handout.items():
    print(f"{label}\n    {text}")

# %% [markdown]
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · Who writes Vietnamese?** In the handout above, which model writes diacritics:
# `"base"` or `"adapter"`?

# %%
WRITES_DIACRITICS = None  # your answer: "base" or "adapter"

# %%
check_equal("1 · diacritics", WRITES_DIACRITICS, "adapter" if any(
    not c.no_adapter for c in app.choices) else "base",
    "the one whose caption has ă, ơ, ư, đ or tone marks")

# %% [markdown]
# **2 · Temperature.** Caption the handout image (`picture`) 5 times with sampling
# (`captioner.Decoding(num_beams=1, do_sample=True, temperature=T)`), one `captioner.caption`
# call at a time, with the adapter (`app.load(adapter)[0]`); do it at T = 0.3 and at T = 1.5,
# each time right after `torch.manual_seed(0)`. How many *different* captions do you get at
# each temperature? The check draws the same captions again.

# %%
adapter = choice  # the model of the handout: the newest adapter, or the base alone
DISTINCT_LOW_T = None  # your answer: a number from 1 to 5
DISTINCT_HIGH_T = None  # your answer

# %%
check_temperature(DISTINCT_LOW_T, DISTINCT_HIGH_T, app.load(adapter)[0], picture)

# %% [markdown]
# **3 · Open.** Upload three photos of your own (a match, a street, a meal). Where does the
# adapter fail, and why? What would you add to the training data to fix it?

# %% [markdown]
# ## Questionnaire
# Answer in a sentence or two each; the solutions notebook has answers.
#
# 1. Why does the base model alone write no Vietnamese diacritics?
# 2. What does the temperature change when captions are sampled, and why do low temperatures
#    give the same caption again and again?
# 3. Why does the demo decode uploaded photos in memory and never save them?
# 4. A student's photo of a meal gets a caption about football. Why?
# 5. Why does `torch.manual_seed(0)` before each batch of samples make the exercise checkable?

# %% [markdown]
# ## What this notebook wrote
# The handout figure. Uploads are decoded in memory and never saved; the app only reads the
# adapters (and, the first time, builds the cached `mini` base model under `~/.cache/vicap`).

# %%
wrote([handout_file])
print(f"adapters read from {app.root}")
