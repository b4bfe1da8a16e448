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
PROFILE = "auto"  # the same profile as notebook 01

# %% [markdown]
# # Solutions · 01 · Data audit
#
# One way to answer each exercise of notebook 01 (run it first: its audited data is read here),
# with the same "check yourself" cells.

# %%
from pathlib import Path

import pandas as pd

from vicap_utils.audit import audit
from vicap_utils.data import load_captions, split_by_image
from vicap_utils.ops.io import read_json
from vicap_utils.prepare import prepare, raw_data
from vicap_utils.teach.exercises import check_equal, check_planted, copy_data_set
from vicap_utils.teach.notebook import setup

cfg, _ = setup(PROFILE)
raw, out = raw_data(cfg), Path(cfg.data.prepared)
data = prepare(cfg, out)  # notebook 01's audited set, read back
summary = read_json(out / "audit.json")
clean = load_captions(out / "clean.json")

# %% [markdown]
# **1 · Kept.** The audit's summary counts them.

# %%
KEPT_CAPTIONS = summary["annotations_ok"]
check_equal("1 · captions kept", KEPT_CAPTIONS, summary["annotations_ok"],
            "captions, not images: the audit's summary counts the ones it kept")

# %% [markdown]
# **2 · Plant a defect and find it.** Cut one image of a scratch copy short, audit the copy,
# read the reason of the rejected image.

# %%
scratch = out.parent / "scratch-01"
captions_copy, images_copy = copy_data_set(raw.train, raw.images, scratch, n_images=12)
victim = sorted(images_copy.iterdir())[0]
victim.write_bytes(victim.read_bytes()[:300])
audit(captions_copy, images_copy, scratch / "audit")
rejects = pd.read_csv(scratch / "audit" / "rejects.csv")
PLANTED_REASON = rejects.loc[rejects["kind"] == "image", "reason"].iloc[0]
check_planted(PLANTED_REASON, scratch / "audit", captions_copy)

# %% [markdown]
# **3 · Another seed.** A new seed draws another validation set: scores of two runs on two
# splits are not comparable, so the split is recorded and checked (`split.json`, the data
# fingerprint).

# %%
new_val = split_by_image(clean, cfg.data.val_fraction, 7)[1]
NEW_VAL_IMAGES = len(set(new_val.images) - set(data.val.images))
check_equal("3 · another seed", NEW_VAL_IMAGES,
            lambda: len(set(split_by_image(clean, cfg.data.val_fraction, 7)[1].images)
                        - set(data.val.images)),
            "image ids in the new validation set and not in data.val (not the captions, not "
            "the images both share)")
print(f"{NEW_VAL_IMAGES} of {len(new_val.images)} validation images change with seed 7")
