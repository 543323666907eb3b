"""PNG plots of a run: learning curves, the test confusion matrix, a value per class."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def learning_curves(history: list[dict]) -> bytes:
    """Loss (train, val) and validation accuracy / macro-F1 / UAR per epoch."""
    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="focal loss", title="Loss")
    ax1.legend()
    for key, name in (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1"),
                      ("val_uar", "UAR")):
        ax2.plot(ep, [h[key] for h in history], label=name)
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    ax2.legend()
    return png_bytes(fig)


def confusion(cm: list[list[int]], labels: list[str], title: str = "Test confusion matrix") -> bytes:
    """Counts, with each row's share as the colour."""

    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels,
           yticklabels=labels, xlabel="predicted", ylabel="true", title=title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    return png_bytes(fig)


def per_class(values: dict[str, float], title: str = "F1 per class") -> bytes:
    """One bar per class (e.g. the test F1), its value written above it."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="F1", title=title)
    return png_bytes(fig)
