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
import hashlib
from collections import defaultdict
from pathlib import Path

import pandas as pd

from vicap_utils.audit import audit
from vicap_utils.data import load_captions, split_by_image
from vicap_utils.ops.io import read_json
from vicap_utils.prepare import prepare, raw_data
from vicap_utils.teach.exercises import check_equal, check_planted
from vicap_utils.teach.notebook import setup
from vicap_utils.toy.data import generate

cfg, _ = setup(PROFILE)
images_dir, out = raw_data(cfg)["train"][1], Path(cfg.data.prepared)
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
# **2 · Plant a defect and find it.** Cut one image of the scratch set short, audit the set,
# read the reason of the rejected image.

# %%
scratch = out.parent / "scratch-01"
captions_copy = generate(scratch, n_images=12, seed=2, overwrite=True)
images_copy = captions_copy.parent / "images"
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

# %% [markdown]
# **4 · Open.** Discussion notes; any of these is a good answer if the detection is concrete.
# - *The same photo under two ids*: hash every image's bytes (or, to catch re-encoded copies,
#   a perceptual hash of a small grey thumbnail) and list the groups of ids sharing one; both
#   copies must land on the same side of the split, or validation scores leak from training.
#   Below, the exact-bytes version on the clean set (0 groups on `mini`: every image is drawn).
# - *Captions in the wrong language*: the share of syllables that carry a Vietnamese letter or
#   tone mark; an English caption has none ("a man riding a horse").
# - *Near-duplicate captions*: normalise, then compare word sets (Jaccard ≥ 0.9) within an
#   image; they inflate the references and bias CIDEr towards that wording.
# - *Tiny or huge images*: the width/height table above; below ~100 px the processor's 384 px
#   resize invents detail, and huge ones slow decoding for nothing.
# - The cost of each check matters: one that reads every image again doubles the audit time.

# %%
same_bytes = defaultdict(list)
for image_id, info in clean.images.items():
    same_bytes[hashlib.sha256((images_dir / info.file_name).read_bytes()).hexdigest()].append(
        image_id)
print(f"{sum(len(ids) > 1 for ids in same_bytes.values())} groups of identical images "
      f"among {len(clean.images)}")

# %% [markdown]
# ## Questionnaire: answers
# 1. A truncated or corrupt file can pass a header check and fail only when its pixels are
#    read, in the middle of a training epoch; decoding once, up front, turns that into a reject.
# 2. `duplicate_caption`: after normalisation (NFC, single spaces) and case-folding they are
#    the same. Kept twice, the caption is trained on twice as often, and in the metrics it
#    counts as two references, which rewards that one wording.
# 3. A caption whose image was rejected (missing, unreadable, outside the images folder): the
#    caption itself may be fine, but it has nothing to describe, so one bad image rejects
#    itself and each of its captions.
# 4. All captions of an image describe the same picture: split by caption, the model would
#    see the validation images in training with other words, and the scores would be inflated.
# 5. Training silently on other data than notebook 01 audited: the fingerprint covers the
#    caption files' bytes, the images' names, sizes and times, and the split settings; if any
#    changes, the data is audited and split again instead of read back.
# 6. Flickr8k's text formats can have a line that does not parse (`malformed_line`); COCO JSON
#    can have ids that do not match (`unknown_image_id`, `duplicate_annotation_id`) and
#    non-text captions (`caption_not_text`), which a text line cannot express.
# 7. The same letter with a tone mark can be stored as one code point or as a letter plus
#    combining marks; without NFC the tokenizer sees two different strings, and the metrics
#    count a correct word as wrong.
