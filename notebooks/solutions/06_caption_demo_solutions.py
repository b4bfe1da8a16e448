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
PROFILE = "auto"  # the same profile as notebook 06

# %% [markdown]
# # Solutions · 06 · Caption demo
#
# One way to answer each exercise of notebook 06 (run notebook 03 first), with the same
# "check yourself" cells; no widgets needed.

# %%
import torch

from vicap_utils import captioner
from vicap_utils.teach.demo import build_app, open_sample
from vicap_utils.teach.exercises import check_equal, check_temperature
from vicap_utils.teach.notebook import setup

cfg, _ = setup(PROFILE)
app = build_app(base=cfg.model.base)
picture = open_sample(next(iter(app.samples.values())))
adapter = next(c for c in app.choices if not c.no_adapter)
base = next(c for c in app.choices if c.no_adapter)

# %% [markdown]
# **1 · Who writes Vietnamese?**

# %%
for choice in (base, adapter):
    print(f"{choice.label}: {captioner.caption(app.load(choice)[0], images=[picture])[0][0][0]}")
WRITES_DIACRITICS = "adapter"
check_equal("1 · diacritics", WRITES_DIACRITICS, "adapter" if any(
    not c.no_adapter for c in app.choices) else "base",
    "the one whose caption has ă, ơ, ư, đ or tone marks")

# %% [markdown]
# **2 · Temperature.**

# %%
distinct = {}
for temperature in (0.3, 1.5):
    torch.manual_seed(0)
    dec = captioner.Decoding(num_beams=1, do_sample=True, temperature=temperature)
    drawn = [captioner.caption(app.load(adapter)[0], images=[picture], dec=dec)[0][0][0]
             for _ in range(5)]
    distinct[temperature] = len(set(drawn))
    print(temperature, drawn)
DISTINCT_LOW_T, DISTINCT_HIGH_T = distinct[0.3], distinct[1.5]
check_temperature(DISTINCT_LOW_T, DISTINCT_HIGH_T, app.load(adapter)[0], picture)
