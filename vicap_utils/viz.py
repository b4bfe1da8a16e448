"""Plots: training curves (more figures join as the evaluation notebooks need them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def plot_history(history: list[dict[str, Any]], out: str | Path | None = None):
    """Train/val loss and val CIDEr per epoch, side by side; saved as PNG when `out` is given."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["val_CIDEr"] for h in history], "o-", color="tab:green")
    best = max(history, key=lambda h: h["val_CIDEr"] if h["val_CIDEr"] == h["val_CIDEr"] else -1)
    ax2.axvline(best["epoch"], color="grey", ls="--", lw=1, label=f"best: epoch {best['epoch']}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val CIDEr")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig
