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
PROFILE = "auto"  # the same profile as notebook 05

# %% [markdown]
# # Solutions · 05 · Gallery
#
# One way to answer each exercise of notebook 05 (run notebooks 01, 03 and 04 first), with the
# same "check yourself" cells.

# %%
from vicap_utils import captioner, report
from vicap_utils.adapters import load_model
from vicap_utils.exercises import biggest_gain, check_equal, three_decodings
from vicap_utils.images import load_rgb
from vicap_utils.notebook import FINE_TUNED, ZERO_SHOT, evaluate_run, setup

cfg, run = setup(PROFILE)
result = evaluate_run(run, reuse=True)
items = report.gallery_items(result.val, result.images, result.predictions,
                             result.cider(FINE_TUNED), 3, 3)

# %% [markdown]
# **1 · The biggest gain.**

# %%
ft, zs = result.cider(FINE_TUNED), result.cider(ZERO_SHOT)
gains = {i: ft[i] - zs.get(i, 0.0) for i in ft}
BIGGEST_GAIN_IMAGE = max(gains, key=lambda i: (gains[i], str(i)))
check_equal("1 · biggest gain", BIGGEST_GAIN_IMAGE,
            lambda: biggest_gain(result.cider(FINE_TUNED), result.cider(ZERO_SHOT)),
            "max over image ids of fine-tuned minus zero-shot per-image CIDEr")

# %% [markdown]
# **2 · Decoding the worst image.**

# %%
worst = next(item for item in items if item.group == "worst")
cap, image = load_model(str(run / "best")), load_rgb(worst.path)
WORST_CAPTIONS = [captioner.caption(cap, images=[image], dec=dec)[0][0][0] for dec in (
    captioner.Decoding(num_beams=1), captioner.Decoding(num_beams=5),
    captioner.Decoding(num_beams=5, repetition_penalty=1.5))]
print("\n".join(WORST_CAPTIONS), "\nreferences:", worst.references[:2])
check_equal("2 · three decodings", WORST_CAPTIONS,
            lambda: three_decodings(load_model(str(run / "best")), load_rgb(worst.path)),
            "captioner.caption(cap, images=[load_rgb(worst.path)], dec=…)[0][0][0], three times")
