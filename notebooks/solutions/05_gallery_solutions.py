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
from vicap_utils import captioner
from vicap_utils.images import load_rgb
from vicap_utils.ops.adapters import load_model
from vicap_utils.teach import report
from vicap_utils.teach.exercises import check_biggest_gain, check_equal, three_decodings
from vicap_utils.teach.notebook import FINE_TUNED, ZERO_SHOT, evaluate_run, setup

cfg, run = setup(PROFILE)
result = evaluate_run(run, reuse=True)
items = report.gallery_items(result.val, result.images, result.predictions,
                             result.cider(FINE_TUNED), 3, 3)

# %% [markdown]
# **1 · The biggest gain.** The gain is a difference per image id; the best fine-tuned image
# is the answer only where zero-shot scores are all equal (0 on `mini`).


# %%
def biggest_gain(fine_tuned: dict, zero_shot: dict):
    """The image id whose fine-tuned CIDEr rose most above its zero-shot CIDEr."""
    return max(fine_tuned, key=lambda i: fine_tuned[i] - zero_shot.get(i, 0.0))


BIGGEST_GAIN = biggest_gain
print("biggest gain: image", BIGGEST_GAIN(result.cider(FINE_TUNED), result.cider(ZERO_SHOT)))
check_biggest_gain(BIGGEST_GAIN, result.cider(FINE_TUNED), result.cider(ZERO_SHOT))

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
            "three captions of the worst image by the adapter, greedy first, then beam 5, "
            "then beam 5 with the penalty")
