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
PROFILE = "auto"  # the same profile as notebook 03b

# %% [markdown]
# # Solutions · 03b · Self-critical training
#
# One way to answer each exercise of notebook 03b (run notebook 03 first), with the same
# "check yourself" cells.

# %%
import torch

from vicap_utils import scst
from vicap_utils.builders import build_captioner, build_examples
from vicap_utils.dataset import image_rows
from vicap_utils.metrics import CiderD, python_tokenize
from vicap_utils.prepare import prepare
from vicap_utils.teach.exercises import check_close, check_equal
from vicap_utils.teach.notebook import setup

cfg, run = setup(PROFILE)
data = prepare(cfg, cfg.data.prepared)
cap, _, _ = build_captioner(cfg, data, scst.adapter_entries(cfg, run / "best"))
scst.load_adapter(cap, run / "best")
examples = build_examples(cfg, cap, data)
ids, _ = image_rows(data.train)
references = data.train.captions_by_image()
torch.manual_seed(0)
rows, k = [0, 1, 2], cfg.scst.samples
features = torch.stack([examples.train.image_source(r) for r in rows])
drawn = scst.sample(cap, features, "features", k, cfg.scst.max_new_tokens)
cider = CiderD([[python_tokenize(c) for c in references[i]] for i in ids])
refs = [[python_tokenize(c) for c in references[ids[r]]] for r in rows for _ in range(k)]
rewards = scst.rewards(cider, drawn.captions, refs).view(len(rows), k)
baseline = scst.baseline(rewards)
advantage = rewards - baseline

# %% [markdown]
# **1 · The baseline.** The mean of the other samples' rewards of image 0.

# %%
BASELINE_00 = float(rewards[0, 1:].sum() / (k - 1))

# %%
check_close("1 · the baseline", BASELINE_00, lambda: float(baseline[0, 0]),
            "the mean of the rewards of image 0's other samples (row 0 of `rewards`)", decimals=4)

# %% [markdown]
# **2 · Pushed up.** The samples whose reward is above the mean of the others.

# %%
N_PUSHED_UP = sum(float(rewards[0, j]) > float(rewards[0].sum() - rewards[0, j]) / (k - 1)
                  for j in range(k))

# %%
check_equal("2 · pushed up", N_PUSHED_UP, lambda: int((advantage[0] > 0).sum()),
            "the samples whose reward beats the mean of the image's other samples")
