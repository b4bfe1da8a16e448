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
# **You will learn to**
# - say why a caption data set must be checked before training, and what each reject reason
#   (missing file, unreadable image, empty or duplicate caption, unknown id…) means;
# - read an audit report and find a planted defect in it;
# - explain why the split is by image and seeded, and why it must never change silently.
#
# **Before you start:** Python, and what a COCO-style captions file looks like (`images` with
# `id`/`file_name`, `annotations` with `image_id`/`caption`).
#
# **Time:** `mini` on a 2-core laptop CPU: about 15 seconds
# (12 s measured; see docs/teaching.md).
# UIT-ViIC on a Kaggle T4 session: about 1 minute to decode its ~3,000 images (estimate).
#
# First, the versions and hardware this run uses.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from vicap_utils.audit import audit
from vicap_utils.data import load_captions, split_by_image
from vicap_utils.images import check_image
from vicap_utils.ops.io import read_json
from vicap_utils.prepare import prepare, raw_data
from vicap_utils.teach import report
from vicap_utils.teach.exercises import check_equal, check_planted
from vicap_utils.teach.notebook import setup, wrote
from vicap_utils.text import normalize_caption
from vicap_utils.toy.data import generate

cfg, _ = setup(PROFILE)

# %% [markdown]
# ## Where the data is
# The `mini` profile uses the synthetic ball-sports set (drawn once, then cached); the real
# profiles find UIT-ViIC or Flickr8k under `/kaggle/input`, or take `data.train_annotations`.

# %%
captions_file, images_dir = raw_data(cfg)["train"]
out = Path(cfg.data.prepared)
print(f"captions: {captions_file}\nimages:   {images_dir}\noutputs:  {out}")

# %% [markdown]
# ## One image, one caption
# The audit decodes every image *fully* (a truncated JPEG passes a header check and fails in
# the middle of training) and normalises every caption: one Unicode form (NFC: "ế" typed on
# two keyboards can be one code point or three), single spaces, no space before punctuation.

# %%
listed = load_captions(captions_file)
first = next(iter(listed.images.values()))
print(check_image(images_dir / first.file_name))
print(repr(normalize_caption("  Một  cầu thủ   đang đá bóng .")))

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

# %% [markdown]
# Its summary, `audit.json`: images and captions read, kept and rejected.

# %% tags=["audit-counts"]
totals = pd.DataFrame({"total": [summary["images_total"], summary["annotations_total"]],
                       "kept": [summary["images_ok"], summary["annotations_ok"]]},
                      index=["images", "captions"])
totals.assign(rejected=totals["total"] - totals["kept"])

# %% [markdown]
# How many rejects each check produced (zero rows are kept, so every check is listed). The
# drawn `mini` set is clean by construction, so there every count is 0; a real set is not.

# %% tags=["reject-reasons"]
pd.DataFrame({"count": summary["rejects"]}).rename_axis("reason")

# %% [markdown]
# ## A set with planted defects
# To see every check at work, we draw a small set like `mini`'s with one of each defect planted
# (`generate(..., defects=True)`): a truncated JPEG, a missing file, a path out of the images
# folder, an image left with no caption, an empty, a duplicate and a non-text caption, a
# caption of an unknown image, a reused annotation id. A JSON file cannot have a broken line,
# so the set also comes as Flickr8k's `captions.txt` with one quote never closed. We audit both
# (one process: 25 images do not need more).

# %%
planted_dir = out.parent / "planted"
planted = generate(planted_dir / "set", n_images=24, seed=1, overwrite=True, defects=True)
audits = {fmt: audit(path, planted.parent / "images", planted_dir / fmt, workers=1)
          for fmt, path in (("coco", planted), ("flickr8k", planted.with_name("captions.txt")))}
pd.DataFrame({fmt: result["rejects"] for fmt, result in audits.items()})

# %% [markdown]
# A few rejected rows per reason, from each `rejects.csv`. Note how one defect hides others:
# the captions of a rejected image are rejected too (`orphaned_by_image`), and an image whose
# captions all fail is left out (`image_without_captions`).

# %% tags=["reject-examples"]
pd.concat([pd.read_csv(planted_dir / fmt / "rejects.csv", dtype=str, keep_default_na=False)
           .groupby("reason", sort=False).head(EXAMPLES_PER_REASON) for fmt in audits],
          ignore_index=True)

# %% [markdown]
# ## What the clean set looks like
# Image sizes matter for the processor's resize; captions per image matter for the metrics
# (CIDEr and BLEU compare against every reference of an image). Every `mini` image has one size
# and five captions (one dot in the plot), so on `mini` we look at the planted set's clean part:
# six of its images were resized and its images keep one to five captions.

# %%
clean = load_captions((out if cfg.data.source != "synthetic" else planted_dir / "coco")
                      / "clean.json")

# %% [markdown]
# One row per image, then the two plots (saved as `image_stats.png`) and the table's summary.

# %% tags=["image-stats"]
per_image = clean.captions_by_image()
images_table = pd.DataFrame([{"image_id": i, "width": info.width, "height": info.height,
                              "captions": len(per_image[i])} for i, info in clean.images.items()])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.scatter(images_table["width"], images_table["height"], s=8, alpha=0.5)
ax1.set(xlabel="width (px)", ylabel="height (px)", title="image sizes")
images_per_count = images_table["captions"].value_counts().sort_index()
ax2.bar(images_per_count.index.astype(str), images_per_count.values, color="tab:orange")
ax2.set(xlabel="captions per image", ylabel="images", title="captions per image")
report.finish(fig, out / "image_stats.png")  # grid, tight layout, saved atomically
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
# ## Exercises
# From easy to open. Each "check yourself" cell says whether your answer is right.
#
# **1 · Kept.** How many captions did the audit keep? (Look at `summary` or `audit.json`.)

# %%
KEPT_CAPTIONS = None  # your answer: a number

# %%
check_equal("1 · captions kept", KEPT_CAPTIONS, summary["annotations_ok"],
            "captions, not images: the audit's summary counts the ones it kept")

# %% [markdown]
# **2 · Plant a defect and find it.** `generate` draws a small clean set (12 images, their
# captions) into a scratch folder. Damage one image there (cut its file short:
# `path.write_bytes(path.read_bytes()[:300])`), run `audit` on that set with the output folder
# `scratch / "audit"`, and give the reason code the audit reports for it (see `rejects.csv`
# there). The check reads that file: the answer must come from your audit.

# %%
scratch = out.parent / "scratch-01"
captions_copy = generate(scratch, n_images=12, seed=2, overwrite=True)
images_copy = captions_copy.parent / "images"
PLANTED_REASON = None  # your answer: the reason code of the damaged image

# %%
check_planted(PLANTED_REASON, scratch / "audit", captions_copy)

# %% [markdown]
# **3 · Another seed.** Split the clean set again with seed 7 (`split_by_image(clean,
# cfg.data.val_fraction, 7)`). How many of its validation images were *not* validation
# images before? What would happen to your scores if the split changed between two runs?

# %%
NEW_VAL_IMAGES = None  # your answer: a number

# %%
check_equal("3 · another seed", NEW_VAL_IMAGES,
            lambda: len(set(split_by_image(clean, cfg.data.val_fraction, 7)[1].images)
                        - set(data.val.images)),
            "image ids in the new validation set and not in data.val (not the captions, not "
            "the images both share)")

# %% [markdown]
# **4 · Open.** What else should an audit check before training a captioner? (Ideas: captions
# in the wrong language, near-duplicate captions that differ by one word, tiny or huge images,
# the same photo under two ids.) Pick one and sketch how you would detect it.

# %% [markdown]
# ## Questionnaire
# Answer in a sentence or two each; the solutions notebook has answers.
#
# 1. Why does the audit decode every image *fully* instead of reading its header?
# 2. Two captions differ only in case and spacing. Which reason rejects the second, and why is
#    keeping both a problem for training and for the metrics?
# 3. What is `orphaned_by_image`, and why does one bad image show up as several rejects?
# 4. Why is the split made by image and not by caption?
# 5. What does the fingerprint in `prepared.json` protect against?
# 6. Which defect can a Flickr8k text file have that a COCO JSON file cannot, and the reverse?
# 7. Why is NFC normalisation needed for Vietnamese captions in particular?

# %% [markdown]
# ## What this notebook wrote

# %%
wrote([out / "audit.json", out / "clean.json", out / "rejects.csv", out / "image_stats.png",
       out / "train.json", out / "val.json", out / "split.json", out / "prepared.json",
       planted_dir / "coco" / "audit.json", planted_dir / "flickr8k" / "audit.json"])
