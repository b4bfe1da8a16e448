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
from vicap_utils.toy.data import VI

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
# **2 · Decoding the worst image.** Discussion: on a hard image the three often differ in a fact
# (the colour, the count), not only in wording. None is "right" by decoding alone: beam search
# returns the likeliest *whole* caption, not the truest, and the repetition penalty only stops
# repeated words. Compare each with the references printed below; if all three are wrong the
# same way, the model never learnt that fact, and no decoding setting will fix it.

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

# %% [markdown]
# **3 · Open.** On `mini` every validation image records what it shows (`scene`: sport, player
# count, shirt colour), so the mistakes can be counted exactly; on real data, read the worst
# images and tally by hand. Below: the share of fine-tuned captions that get each fact wrong.
# Discussion notes:
# - *The sport* is told by the court and the ball, large areas of colour: more images (or
#   epochs) fix most of it.
# - *The shirt colour* of small players is a few pixels; with `mini`'s 160 × 120 drawings
#   resized for the model, white and yellow shirts on sand or wood blur together: a bigger
#   image size (or cropping) helps more than more data.
# - *The number of players* is the hardest: counting needs the whole image at once and the
#   caption's first word carries it; mistakes on 2 vs 3 persist longest, and beam search
#   prefers the most frequent number when unsure.

# %%
facts = {"sport": lambda s, c: any(v in c for v in VI["verbs"][s["sport"]]),
         "players": lambda s, c: c.split()[0] == VI["numbers"][s["n_players"]]
         or f" {VI['numbers'][s['n_players']]} " in f" {c} ",
         "shirt colour": lambda s, c: VI["colours"][s["shirt"]] in c.split()}
scenes = {i: info.extra["scene"] for i, info in result.val.images.items()
          if "scene" in info.extra}
captions = {i: result.predictions[FINE_TUNED][i].lower().rstrip(".") for i in scenes}
if scenes:
    print({fact: f"{sum(not ok(scenes[i], captions[i]) for i in scenes) / len(scenes):.0%} wrong"
           for fact, ok in facts.items()})

# %% [markdown]
# ## Questionnaire: answers
# 1. The per-image CIDEr of the fine-tuned adapter: the three best and three worst images of
#    the validation set, each with its references and both systems' captions.
# 2. Per-image CIDEr uses document frequencies of the whole validation set, so an image's
#    score depends on the others; it ranks images within one evaluation, it is not a grade.
# 3. Zero-shot is 0 on every `mini` image, so "best fine-tuned" and "biggest gain" name the
#    same image there; on real data, where zero-shot scores vary, they differ.
# 4. Greedy takes the likeliest next token each step; beam search keeps the `num_beams`
#    likeliest partial captions and returns the best whole one, usually more fluent and
#    shorter; a repetition penalty lowers tokens already written, against "người người".
# 5. The HTML page embeds every image as base64 JPEG, so it opens anywhere (a phone, an
#    e-mail) without the data set; the PNG is for slides and print.
# 6. Per-image scores and a few examples show *what* goes wrong (sport, colour, count); a
#    single mean can hide a model that is excellent on half the images and useless on the rest.
