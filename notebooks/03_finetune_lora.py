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
OVERRIDES: list[str] = []  # `--set`-style settings, e.g. ["train.epochs=3", "train.lr=1e-4"]
OVERWRITE = True  # start the run folder afresh; False resumes an unfinished run from last/

# %% [markdown]
# # 03 · Fine-tune BLIP with LoRA
#
# We freeze the base model and train small LoRA matrices in the text decoder's attention,
# plus the embedding rows of the Vietnamese vocabulary entries. The run keeps the adapter with
# the best validation CIDEr in `best/`, the last one in `final/`, and a resumable checkpoint
# in `last/`.
#
# First, the versions and hardware this run uses.

# %%
import pandas as pd

from vicap_utils import report
from vicap_utils.notebook import (
    setup,
    show_json,
    trainable_parameters,
    vocabulary_table,
    wrote,
)
from vicap_utils.train import train

cfg, run = setup(PROFILE, OVERRIDES)

# %% [markdown]
# ## The resolved configuration
# The profile's settings with the overrides applied; training saves it as `config.json`, and
# `vicap train --config config.json` repeats the run exactly.

# %%
report.config_table(cfg.to_dict())

# %% [markdown]
# ## Training
# The progress bar shows steps and the running loss; each epoch ends with a validation pass
# (loss and beam-search CIDEr). Training stops early when CIDEr has not improved for
# `train.patience` validations. The trainable-parameter line is printed during set-up.

# %%
summary = train(cfg, run, resume=not OVERWRITE and (run / "last").is_dir(), overwrite=OVERWRITE)

# %% [markdown]
# ## What was trained
# Trainable parameters per part of the model, as training counted them: LoRA matrices
# and the new embedding rows are a small share of the whole.

# %%
trainable_parameters(summary)

# %% [markdown]
# ## Vocabulary
# How the training captions fared with the stock tokenizer ("before") and the extended one
# ("after"): the share that survives encode → decode, the [UNK] rate and tokens per caption.

# %%
vocabulary_table(summary["vocabulary"])

# %% [markdown]
# ## Learning curves
# Training and validation loss per epoch, and validation CIDEr with the best epoch marked.

# %%
history = pd.read_csv(run / "history.csv")
fig = report.plot_history(history.to_dict("records"))
history.round(4)

# %%
print(f"best epoch {summary['best_epoch']} (val CIDEr {summary['best_val_CIDEr']:.3f}) "
      f"of {summary['epochs_run']}; adapter in {summary['best']}")

# %% [markdown]
# ## What this notebook wrote

# %%
show_json(summary)
wrote([run / "best", run / "final", run / "last", run / "history.csv", run / "loss_curve.png",
       run / "config.json", run / "summary.json", run / "data" / "val.json"])
