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
AUDIT_WORKERS = None  # image-decoding processes (None = every core)
EXAMPLES_PER_REASON = 2

# %% [markdown]
# # 01 · Data audit
#
# Before training on a caption set we check it: every image must decode, every caption must
# have words, and no caption may be counted twice. The audit writes the clean set; we then
# split it, by image, into training and validation sets with a fixed seed. Notebook 03 trains
# on exactly the files written here (same folder, same fingerprint).
#
# First, the versions and hardware this run used.

# %%
from pathlib import Path

from vicap_utils import report
from vicap_utils.data import load_captions
from vicap_utils.io import read_json
from vicap_utils.notebook import setup, wrote
from vicap_utils.prepare import prepare, raw_data

cfg, _ = setup(PROFILE)

# %% [markdown]
# ## Where the data is
# The `mini` profile uses the synthetic ball-sports set (drawn once, then cached); the real
# profiles find UIT-ViIC or Flickr8k under `/kaggle/input`, or take `data.train_annotations`.

# %%
raw = raw_data(cfg)
out = Path(cfg.data.prepared)
print(f"captions: {raw.train}\nimages:   {raw.images}\noutputs:  {out}")

# %% [markdown]
# ## The audit and the split
# Every image is fully decoded (a truncated JPEG passes a header check but fails training),
# captions are NFC-normalised, and empty or duplicate captions are rejected with a reason.
# Then the clean set is split by image (all captions of an image on one side), seeded, the
# same on every machine: images are ranked by a hash of `seed:image_id`. `prepare` does both
# and records a fingerprint of the inputs, so training reuses this work instead of redoing it.

# %%
data = prepare(cfg, out, workers=AUDIT_WORKERS)
summary = read_json(out / "audit.json")
report.audit_counts(summary)

# %% [markdown]
# How many rejects each check produced (zero rows are kept, so every check is listed):

# %%
report.reject_reasons(summary)

# %% [markdown]
# A few rejected rows per reason, from `rejects.csv`:

# %%
report.reject_examples(out / "rejects.csv", EXAMPLES_PER_REASON)

# %% [markdown]
# ## What the clean set looks like
# Image sizes matter for the processor's resize; captions per image matter for the metrics
# (CIDEr and BLEU compare against every reference of an image).

# %%
clean = load_captions(out / "clean.json")
images_table = report.image_table(clean)
fig = report.plot_image_stats(images_table, out / "image_stats.png")

# %%
images_table[["width", "height", "captions"]].describe().round(1)

# %% [markdown]
# A few clean captions:

# %%
clean.to_frame().head(8)

# %% [markdown]
# ## Train / validation split
# What training will read: `train.json` and `val.json` in the same folder.

# %%
print(f"{len(data.train.images)} training images ({len(data.train.annotations)} captions), "
      f"{len(data.val.images)} validation images; fingerprint {data.fingerprint}")

# %% [markdown]
# ## What this notebook wrote

# %%
wrote([out / "audit.json", out / "clean.json", out / "rejects.csv", out / "image_stats.png",
       data.train_file, data.val_file, out / "split.json", out / "prepared.json"])
